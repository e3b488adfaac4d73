"""Every filter reject reason (issue 2, point 5), their precedence, and the aggregated reason formats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from schedkit import (
    MIG_1G,
    chosen,
    gpu,
    gpu_pod,
    idle,
    mig_gpu,
    node,
    pod,
    scheduler,
    usage,
)

from hami.devices import Card, CardSelector, DeviceRequest
from hami.protocol import keys
from hami.protocol.weights import DEFAULT_WEIGHTS
from hami.scheduling.decide import summarize
from hami.scheduling.fit import FitRequest, fit_container, format_reasons, precheck, rejection
from hami.scheduling.policy import CardPolicy

ONE = [gpu("GPU-a")]


def reason_on(
    nodes: list[dict[str, Any]], p: dict[str, Any], *, warm: Sequence[dict[str, Any]] = (), **kw: Any
) -> str:
    """Place ``warm`` pods first, then return the reject reason of ``p`` on node n1 (asserting it fails)."""
    sched = scheduler(*nodes, **kw)
    for w in warm:
        assert sched.decide(w).node is not None, w["metadata"]["name"]
    d = sched.decide(p)
    assert d.node is None, d
    assert not d.invalid
    return d.failed["n1"]


def on(uuid: str, name: str, **res: Any) -> dict[str, Any]:
    """A warm-up pod pinned to one card."""
    return gpu_pod(name, annotations={keys.NVIDIA_USE_GPUUUID: uuid}, **res)


# --- one reason per rule -------------------------------------------------------------------------


def test_card_not_health() -> None:
    assert reason_on([node("n1", [gpu("GPU-a", health=False)])], gpu_pod()) == "1/1 CardNotHealth"


def test_card_cordoned() -> None:
    n = node("n1", ONE, annotations={keys.DEVICE_CORDON: "GPU-a"})
    assert reason_on([n], gpu_pod()) == "1/1 CardCordoned"


def test_cordon_only_excludes_the_listed_cards() -> None:
    n = node("n1", [gpu("GPU-a"), gpu("GPU-b", index=1)], annotations={keys.DEVICE_CORDON: " GPU-a , "})
    d = scheduler(n).decide(gpu_pod(mem=100))
    assert chosen(d) == [["GPU-b"]]


@pytest.mark.parametrize(
    "annotations",
    [
        {keys.NVIDIA_USE_GPUTYPE: "A100"},
        {keys.NVIDIA_NOUSE_GPUTYPE: "t4"},
        {keys.NVIDIA_NOUSE_GPUTYPE: "A100,Tesla"},
        {keys.NVIDIA_VGPU_MODE: "mig"},
    ],
    ids=["use-gputype", "nouse-gputype", "nouse-gputype-list", "vgpu-mode"],
)
def test_card_type_mismatch(annotations: dict[str, str]) -> None:
    assert reason_on([node("n1", ONE)], gpu_pod(annotations=annotations)) == "1/1 CardTypeMismatch"


def test_type_rules_pick_the_matching_card() -> None:
    n = node("n1", [gpu("GPU-t4"), gpu("GPU-a100", type="NVIDIA-A100-PCIE-40GB", mem=40000, index=1)])
    sched = scheduler(n)
    assert chosen(sched.decide(gpu_pod("a", mem=10, annotations={keys.NVIDIA_USE_GPUTYPE: "a100"}))) == [
        ["GPU-a100"]
    ]
    assert chosen(sched.decide(gpu_pod("b", mem=10, annotations={keys.NVIDIA_USE_GPUTYPE: "TESLA T4"}))) == [
        ["GPU-t4"]
    ]
    assert chosen(sched.decide(gpu_pod("c", mem=10, annotations={keys.NVIDIA_NOUSE_GPUTYPE: "T4"}))) == [
        ["GPU-a100"]
    ]


@pytest.mark.parametrize(
    "annotations",
    [{keys.NVIDIA_USE_GPUUUID: "GPU-b"}, {keys.NVIDIA_NOUSE_GPUUUID: "GPU-a"}],
    ids=["use-gpuuuid", "nouse-gpuuuid"],
)
def test_card_uuid_mismatch(annotations: dict[str, str]) -> None:
    assert reason_on([node("n1", ONE)], gpu_pod(annotations=annotations)) == "1/1 CardUuidMismatch"


def test_uuid_rules_pick_the_listed_card() -> None:
    n = node("n1", [gpu("GPU-a"), gpu("GPU-b", index=1)])
    sched = scheduler(n)
    assert chosen(sched.decide(gpu_pod("a", mem=1, annotations={keys.NVIDIA_USE_GPUUUID: "GPU-b"}))) == [
        ["GPU-b"]
    ]
    assert chosen(sched.decide(gpu_pod("b", mem=1, annotations={keys.NVIDIA_NOUSE_GPUUUID: "GPU-a"}))) == [
        ["GPU-b"]
    ]


def test_card_time_slicing_exhausted() -> None:
    n = node("n1", [gpu("GPU-a", count=2)])
    warm = [gpu_pod("w1", mem=100, cores=0), gpu_pod("w2", mem=100, cores=0)]
    assert reason_on([n], gpu_pod(mem=100, cores=0), warm=warm) == "1/1 CardTimeSlicingExhausted"


def test_mutex_policy_conflicts_with_a_used_card() -> None:
    warm = [gpu_pod("w", mem=100, cores=0)]
    p = gpu_pod(mem=100, cores=0, annotations={keys.GPU_SCHEDULER_POLICY: "mutex"})
    assert reason_on([node("n1", ONE)], p, warm=warm) == "1/1 ExclusiveDeviceAllocateConflict"


def test_mutex_policy_takes_an_idle_card_even_under_binpack() -> None:
    n = node("n1", [gpu("GPU-a"), gpu("GPU-b", index=1)])
    sched = scheduler(n, gpu_policy="binpack")
    sched.decide(on("GPU-a", "w", mem=100, cores=0))
    d = sched.decide(gpu_pod(mem=100, cores=0, annotations={keys.GPU_SCHEDULER_POLICY: "binpack,mutex"}))
    assert chosen(d) == [["GPU-b"]]


def test_exclusive_whole_core_request_conflicts_with_any_user() -> None:
    # the card still has all its cores and plenty of memory, but someone is on it
    warm = [gpu_pod("w", mem=100, cores=0)]
    p = gpu_pod(mem=100, cores=100)
    assert reason_on([node("n1", ONE)], p, warm=warm) == "1/1 ExclusiveDeviceAllocateConflict"


def test_exclusive_rule_only_applies_to_100_core_cards() -> None:
    n = node("n1", [gpu("GPU-a", cores=200)])
    sched = scheduler(n)
    assert sched.decide(gpu_pod("w", mem=100, cores=0)).node == "n1"
    assert sched.decide(gpu_pod(mem=100, cores=100)).node == "n1"


def test_card_insufficient_memory() -> None:
    warm = [gpu_pod("w", mem=10000, cores=0)]
    assert reason_on([node("n1", ONE)], gpu_pod(mem=6001, cores=0), warm=warm) == "1/1 CardInsufficientMemory"
    # exactly the remainder fits
    sched = scheduler(node("n1", ONE))
    sched.decide(warm[0])
    assert sched.decide(gpu_pod(mem=6000, cores=0)).node == "n1"


def test_percentage_memory_is_resolved_per_card() -> None:
    warm = [gpu_pod("w", pct=50, cores=0)]
    assert reason_on([node("n1", ONE)], gpu_pod(pct=51, cores=0), warm=warm) == "1/1 CardInsufficientMemory"


def test_whole_card_request_does_not_fit_a_shared_card() -> None:
    warm = [gpu_pod("w", mem=1, cores=0)]
    assert reason_on([node("n1", ONE)], gpu_pod(), warm=warm) == "1/1 CardInsufficientMemory"


def test_card_insufficient_core() -> None:
    warm = [gpu_pod("w", mem=100, cores=60)]
    assert reason_on([node("n1", ONE)], gpu_pod(mem=100, cores=41), warm=warm) == "1/1 CardInsufficientCore"


def test_card_compute_units_exhausted() -> None:
    # a partial-memory pod holds all cores; a 0-core request has nothing left to run on
    warm = [gpu_pod("w", mem=100, cores=100)]
    assert (
        reason_on([node("n1", ONE)], gpu_pod(mem=100, cores=0), warm=warm) == "1/1 CardComputeUnitsExhausted"
    )


def test_card_mig_topology_infeasible() -> None:
    n = node("n1", [mig_gpu("GPU-m")])
    warm = [gpu_pod("w", mem=40000)]  # the 7g profile: the whole GPU
    assert reason_on([n], gpu_pod(mem=1000), warm=warm) == "1/1 CardMigTopologyInfeasible"


def test_mig_request_larger_than_every_profile_is_infeasible() -> None:
    n = node("n1", [mig_gpu("GPU-m", profiles=(MIG_1G,))])  # 1g only
    assert reason_on([n], gpu_pod(mem=6000)) == "1/1 CardMigTopologyInfeasible"


def test_node_insufficient_device() -> None:
    assert reason_on([node("n1", ONE)], gpu_pod(gpu=2, mem=10)) == "1/2 NodeInsufficientDevice"


def test_node_without_any_card_of_the_vendor() -> None:
    # a node whose registration holds no card is not registered at all
    sched = scheduler(node("n1", ONE))
    assert sched.observe_node(node("n2", [])) is None
    d = sched.decide(gpu_pod(), candidates=["n2"])
    assert d.failed == {"n2": "node unregistered"}


def test_numa_not_fit() -> None:
    n = node("n1", [gpu("GPU-a", numa=0), gpu("GPU-b", numa=1, index=1)])
    p = gpu_pod(gpu=2, mem=10, annotations={keys.NVIDIA_NUMA_BIND: "true"})
    assert reason_on([n], p) == "2/2 NumaNotFit"
    # without the binding the two cards serve the pod
    assert scheduler(n).decide(gpu_pod(gpu=2, mem=10)).node == "n1"


def test_allocated_cards_insufficient_when_too_few_cards_are_eligible() -> None:
    n = node("n1", [gpu("GPU-a"), gpu("GPU-b", index=1, health=False)])
    assert (
        reason_on([n], gpu_pod(gpu=2, mem=10)) == "1/2 AllocatedCardsInsufficientRequest, 1/2 CardNotHealth"
    )


# --- precedence (HAMi's check order) ------------------------------------------------------------------


def fit_request(**kw: Any) -> FitRequest:
    base: dict[str, Any] = {
        "request": DeviceRequest(vendor="NVIDIA", count=1, mem=1000, cores=100),
        "container_index": 0,
        "selector": CardSelector(),
        "policy": CardPolicy.parse("spread", source="test"),
        "weights": DEFAULT_WEIGHTS,
        "numa_bind": False,
    }
    base.update(kw)
    return FitRequest(**base)


MUTEX = CardPolicy.parse("mutex", source="test")
NONE: frozenset[str] = frozenset()


def test_rejection_order_follows_hami() -> None:
    """A card failing every check reports the first one; fixing each in turn reveals the next."""
    c = Card(uuid="GPU-a", vendor="NVIDIA", type="NVIDIA-Tesla T4", count=1, totalmem=1000, totalcores=100)
    c.health = False
    c.used, c.usedmem, c.usedcores = 1, 1000, 100
    cordoned = frozenset({"GPU-a"})
    wrong_type = CardSelector(use_types=("a100",), use_uuids=frozenset({"GPU-b"}))
    wrong_uuid = CardSelector(use_uuids=frozenset({"GPU-b"}))
    steps: list[tuple[str | None, FitRequest, frozenset[str]]] = []

    def check(expected: str | None, fr: FitRequest, cord: frozenset[str]) -> None:
        steps.append((rejection(c, fr, cord), fr, cord))
        assert steps[-1][0] == expected, (expected, c)

    check("CardNotHealth", fit_request(selector=wrong_type, policy=MUTEX), cordoned)
    c.health = True
    check("CardCordoned", fit_request(selector=wrong_type, policy=MUTEX), cordoned)
    check("CardTypeMismatch", fit_request(selector=wrong_type, policy=MUTEX), NONE)
    check("CardUuidMismatch", fit_request(selector=wrong_uuid, policy=MUTEX), NONE)
    check("CardTimeSlicingExhausted", fit_request(policy=MUTEX), NONE)
    c.count = 10
    check("ExclusiveDeviceAllocateConflict", fit_request(policy=MUTEX), NONE)
    check("CardInsufficientMemory", fit_request(), NONE)
    c.usedmem = 0
    check("CardInsufficientCore", fit_request(), NONE)
    c.usedcores = 0
    check("ExclusiveDeviceAllocateConflict", fit_request(), NONE)  # 100-core request, card in use
    c.used = 0
    check(None, fit_request(), NONE)


def test_compute_exhausted_only_for_zero_core_requests() -> None:
    c = Card(uuid="GPU-a", vendor="NVIDIA", type="T4", count=10, totalmem=1000, totalcores=100)
    c.used, c.usedcores = 1, 100
    zero = fit_request(request=DeviceRequest(vendor="NVIDIA", count=1, mem=1))
    one = fit_request(request=DeviceRequest(vendor="NVIDIA", count=1, mem=1, cores=1))
    assert rejection(c, zero, NONE) == "CardComputeUnitsExhausted"
    assert rejection(c, one, NONE) == "CardInsufficientCore"


def test_failed_fit_reports_and_precheck_agrees() -> None:
    cards = [
        Card(uuid="GPU-a", vendor="NVIDIA", type="T4", count=10, totalmem=1000, totalcores=100),
        Card(uuid="GPU-b", vendor="NVIDIA", type="T4", count=10, totalmem=1000, totalcores=100, health=False),
    ]
    fr = fit_request(request=DeviceRequest(vendor="NVIDIA", count=2, mem=10))
    placed, reason = fit_container(cards, fr, cordoned=NONE, pair_scores={})
    assert placed is None
    assert reason == "1/2 AllocatedCardsInsufficientRequest, 1/2 CardNotHealth"
    assert precheck(cards, fr, NONE) == reason


def test_precheck_passes_what_fits_alone() -> None:
    cards = [Card(uuid="GPU-a", vendor="NVIDIA", type="T4", count=10, totalmem=1000, totalcores=100)]
    fr = fit_request(request=DeviceRequest(vendor="NVIDIA", count=1, mem=1000, cores=100))
    assert precheck(cards, fr, NONE) is None
    assert precheck(cards, fr, frozenset({"GPU-a"})) == "1/1 CardCordoned"
    two = fit_request(request=DeviceRequest(vendor="NVIDIA", count=2, mem=1))
    assert precheck(cards, two, NONE) == "1/2 NodeInsufficientDevice"


# --- aggregated formats ---------------------------------------------------------------------------


def test_card_reasons_are_counted_over_all_cards_and_sorted() -> None:
    cards = [gpu(f"GPU-{i}", index=i, health=i >= 3) for i in range(8)]  # 3 unhealthy
    n = node("n1", cards)
    sched = scheduler(n)
    for i in range(3, 8):
        assert sched.decide(on(f"GPU-{i}", f"w{i}", mem=15000, cores=0)).node == "n1"
    d = sched.decide(gpu_pod(mem=2000, cores=0))
    assert d.failed["n1"] == "5/8 CardInsufficientMemory, 3/8 CardNotHealth"
    assert format_reasons({"B": 5, "A": 3}, 8) == "3/8 A, 5/8 B"


def test_node_summary_groups_nodes_by_reason() -> None:
    sick = [gpu("GPU-x", health=False)]
    sched = scheduler(node("n1", sick), node("n2", [gpu("GPU-y", health=False)]), node("n3", ONE))
    d = sched.decide(gpu_pod(gpu=2, mem=1), candidates=["n1", "n2", "n3", "ghost"])
    assert d.node is None
    assert d.failed == {
        "n1": "1/2 NodeInsufficientDevice",
        "n2": "1/2 NodeInsufficientDevice",
        "n3": "1/2 NodeInsufficientDevice",
        "ghost": "node unregistered",
    }
    d = sched.decide(gpu_pod(mem=1), candidates=["n1", "n2", "ghost"])
    assert d.reason == (
        "0/3 nodes are available: 2 nodes (n1, n2): 1/1 CardNotHealth; 1 node (ghost): node unregistered"
    )
    assert idle(sched.state)


def test_summary_shows_at_most_five_nodes() -> None:
    failed = {f"n{i}": "1/1 CardNotHealth" for i in range(7)}
    assert (
        summarize(failed, 7)
        == "0/7 nodes are available: 7 nodes (n0, n1, n2, n3, n4, ...): 1/1 CardNotHealth"
    )


def test_rejected_nodes_are_reported_even_when_another_fits() -> None:
    sched = scheduler(node("n1", [gpu("GPU-x", health=False)]), node("n2", ONE))
    d = sched.decide(gpu_pod(mem=1))
    assert d.node == "n2"
    # n1 was tried only if it ranked first; when tried, its reason is kept
    assert set(d.failed) <= {"n1"}
    assert usage(sched.state, "n2")["GPU-a"] == (1, 1, 0)


def test_unknown_pod_request_on_multi_container_pod_reports_first_failure() -> None:
    from schedkit import container

    p = pod("p", container("a", gpu=1, mem=10000), container("b", gpu=1, mem=10000))
    assert reason_on([node("n1", ONE)], p) == "1/1 CardInsufficientMemory"
