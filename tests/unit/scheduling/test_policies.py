"""Card and node policies (issue 2, point 6): binpack/spread, per-pod overrides, comma chains, numa-bind,
topology-aware pair scores, scoring weights, and bad policy annotations."""

from __future__ import annotations

from typing import Any

import pytest
from schedkit import chosen, gpu, gpu_pod, idle, node, scheduler, usage

from hami.protocol import ProtocolError, keys
from hami.protocol.weights import ScoringWeights
from hami.scheduling import Scheduler
from hami.scheduling.policy import CardPolicy, pod_policy


def pinned(uuid: str, name: str, **res: Any) -> dict[str, Any]:
    return gpu_pod(name, annotations={keys.NVIDIA_USE_GPUUUID: uuid}, **res)


def small(name: str = "p", policy: str | None = None, **ann: str) -> dict[str, Any]:
    annotations = dict(ann)
    if policy is not None:
        annotations[keys.GPU_SCHEDULER_POLICY] = policy
    return gpu_pod(name, mem=1000, cores=10, annotations=annotations)


# --- cards: two-card node -------------------------------------------------------------------------


def two_card_scheduler(**kw: Any) -> Scheduler:
    """GPU-a (index 0) idle, GPU-b (index 1) holding 4000 MiB / 20 cores."""
    sched = scheduler(node("n1", [gpu("GPU-a", index=0), gpu("GPU-b", index=1)]), **kw)
    assert sched.decide(pinned("GPU-b", "warm", mem=4000, cores=20)).node == "n1"
    return sched


@pytest.mark.parametrize(("policy", "card"), [("binpack", "GPU-b"), ("spread", "GPU-a")])
def test_card_policy_default_on_two_cards(policy: str, card: str) -> None:
    sched = two_card_scheduler(gpu_policy=policy)
    assert chosen(sched.decide(small())) == [[card]]


@pytest.mark.parametrize(
    ("default", "annotation", "card"), [("spread", "binpack", "GPU-b"), ("binpack", "spread", "GPU-a")]
)
def test_card_policy_per_pod_annotation_wins(default: str, annotation: str, card: str) -> None:
    sched = two_card_scheduler(gpu_policy=default)
    assert chosen(sched.decide(small(policy=annotation))) == [[card]]
    assert chosen(sched.decide(small(policy=annotation.upper()))) == [[card]]


def test_spread_on_idle_cards_takes_the_highest_index() -> None:
    # HAMi walks its sorted device list from the end: among equal cards the highest index wins
    sched = scheduler(node("n1", [gpu("GPU-z", index=0), gpu("GPU-y", index=1)]))
    assert chosen(sched.decide(small())) == [["GPU-y"]]


def test_binpack_fills_one_card_then_moves_on() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a", index=0), gpu("GPU-b", index=1)]), gpu_policy="binpack")
    got = [chosen(sched.decide(gpu_pod(f"p{i}", mem=8000, cores=50)))[0][0] for i in range(4)]
    assert got == ["GPU-b", "GPU-b", "GPU-a", "GPU-a"]


def test_spread_alternates_cards() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a", index=0), gpu("GPU-b", index=1)]), gpu_policy="spread")
    got = [chosen(sched.decide(gpu_pod(f"p{i}", mem=4000, cores=25)))[0][0] for i in range(4)]
    assert got == ["GPU-b", "GPU-a", "GPU-b", "GPU-a"]


# --- nodes: two nodes ----------------------------------------------------------------------------


def two_node_scheduler(**kw: Any) -> Scheduler:
    """n1 idle, n2 busy (by name n1 would win ties, so only the score can pick n2)."""
    sched = scheduler(node("n1", [gpu("GPU-1")]), node("n2", [gpu("GPU-2")]), **kw)
    assert sched.decide(gpu_pod("warm", mem=4000, cores=20), candidates=["n2"]).node == "n2"
    return sched


@pytest.mark.parametrize(("policy", "expected"), [("binpack", "n2"), ("spread", "n1")])
def test_node_policy_default_on_two_nodes(policy: str, expected: str) -> None:
    sched = two_node_scheduler(node_policy=policy)
    assert sched.decide(small()).node == expected


@pytest.mark.parametrize(
    ("default", "annotation", "expected"), [("binpack", "spread", "n1"), ("spread", "binpack", "n2")]
)
def test_node_policy_per_pod_annotation_wins(default: str, annotation: str, expected: str) -> None:
    sched = two_node_scheduler(node_policy=default)
    d = sched.decide(small(**{keys.NODE_SCHEDULER_POLICY: annotation}))
    assert d.node == expected


def test_binpack_node_falls_back_when_the_busiest_does_not_fit() -> None:
    sched = two_node_scheduler(node_policy="binpack")
    d = sched.decide(gpu_pod(mem=15000, cores=0))
    assert d.node == "n1"
    assert d.failed == {"n2": "1/1 CardInsufficientMemory"}


def test_node_score_counts_slots_cores_and_memory() -> None:
    sched = two_node_scheduler()
    # n2: 1/10 slots, 20/100 cores, 4000/16000 MiB -> 10 * (0.1 + 0.2 + 0.25)
    assert sched.state.nodes["n2"].score() == pytest.approx(5.5)
    assert sched.state.nodes["n1"].score() == 0


# --- comma chains and numa --------------------------------------------------------------------------


def three_card_scheduler() -> Scheduler:
    """A: numa 0 idle; B: numa 1, 4000 MiB; C: numa 0, 2000 MiB."""
    sched = scheduler(
        node(
            "n1",
            [gpu("GPU-A", numa=0, index=0), gpu("GPU-B", numa=1, index=1), gpu("GPU-C", numa=0, index=2)],
        )
    )
    sched.decide(pinned("GPU-B", "wb", mem=4000, cores=0))
    sched.decide(pinned("GPU-C", "wc", mem=2000, cores=0))
    return sched


@pytest.mark.parametrize(
    ("policy", "card"),
    [
        ("binpack", "GPU-B"),
        ("binpack,numa", "GPU-B"),  # most used first, NUMA only breaks ties
        ("numa", "GPU-A"),  # lowest NUMA first, then spread
        ("numa,binpack", "GPU-C"),  # lowest NUMA first, then the most used there
        ("numa,spread", "GPU-A"),
        ("spread,numa", "GPU-A"),
    ],
)
def test_comma_chain_orders_lexicographically(policy: str, card: str) -> None:
    assert chosen(three_card_scheduler().decide(small(policy=policy))) == [[card]]


def test_chain_parsing() -> None:
    assert CardPolicy.parse("binpack,numa", source="x") == CardPolicy(sort_keys=("binpack", "numa"))
    assert CardPolicy.parse(" NUMA ", source="x") == CardPolicy(sort_keys=("numa", "spread"))
    assert CardPolicy.parse("topology-aware", source="x") == CardPolicy(
        sort_keys=("spread",), topology_aware=True
    )
    assert CardPolicy.parse("binpack,mutex", source="x") == CardPolicy(sort_keys=("binpack",), mutex=True)


def four_numa_cards() -> list[Any]:
    return [
        gpu("GPU-A", numa=0, index=0),
        gpu("GPU-B", numa=0, index=1),
        gpu("GPU-C", numa=1, index=2),
        gpu("GPU-D", numa=1, index=3),
    ]


def test_numa_bind_keeps_a_containers_cards_on_one_numa_node() -> None:
    def fresh() -> Scheduler:
        sched = scheduler(node("n1", four_numa_cards()))
        # B and D slightly used: spread prefers A, C (different NUMA nodes) for two cards
        sched.decide(pinned("GPU-B", "wb", mem=100, cores=0))
        sched.decide(pinned("GPU-D", "wd", mem=100, cores=0))
        return sched

    # idle A and C tie: the highest index (C) comes first, and its NUMA node (1) is bound
    assert chosen(fresh().decide(gpu_pod(gpu=2, mem=1000))) == [["GPU-C", "GPU-A"]]
    d = fresh().decide(gpu_pod(gpu=2, mem=1000, annotations={keys.NVIDIA_NUMA_BIND: "true"}))
    assert chosen(d) == [["GPU-C", "GPU-D"]]
    d = fresh().decide(gpu_pod(gpu=2, mem=1000, annotations={keys.NVIDIA_NUMA_BIND: "TRUE"}))
    assert chosen(d) == [["GPU-C", "GPU-D"]]
    d = fresh().decide(gpu_pod(gpu=2, mem=1000, annotations={keys.NVIDIA_NUMA_BIND: "false"}))
    assert chosen(d) == [["GPU-C", "GPU-A"]]


def test_numa_bind_skips_a_numa_node_that_cannot_hold_the_container() -> None:
    sched = scheduler(node("n1", four_numa_cards()))
    sched.decide(pinned("GPU-A", "wa", mem=16000, cores=0))  # numa 0 keeps only GPU-B
    d = sched.decide(gpu_pod(gpu=2, mem=1000, annotations={keys.NVIDIA_NUMA_BIND: "true"}))
    assert chosen(d) == [["GPU-D", "GPU-C"]]


def test_numa_bind_applies_per_container() -> None:
    from schedkit import container, pod

    sched = scheduler(node("n1", four_numa_cards()))
    p = pod(
        "p",
        container("a", gpu=2, mem=1000),
        container("b", gpu=2, mem=1000),
        annotations={keys.NVIDIA_NUMA_BIND: "true"},
    )
    got = chosen(sched.decide(p))
    numa = {"GPU-A": 0, "GPU-B": 0, "GPU-C": 1, "GPU-D": 1}
    assert all(len({numa[u] for u in c}) == 1 for c in got), got


# --- topology-aware ------------------------------------------------------------------------------------


def symmetric(pairs: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (a, b), s in pairs.items():
        out.setdefault(a, {})[b] = s
        out.setdefault(b, {})[a] = s
    return out


# B-D share NVLink (400); A-C a fast switch (100); the rest are slow. Sums: A 150, B 450, C 140, D 440.
PAIRS = symmetric(
    {
        ("GPU-A", "GPU-B"): 30,
        ("GPU-A", "GPU-C"): 100,
        ("GPU-A", "GPU-D"): 20,
        ("GPU-B", "GPU-C"): 20,
        ("GPU-B", "GPU-D"): 400,
        ("GPU-C", "GPU-D"): 20,
    }
)


def topo_scheduler(default: str = "spread") -> Scheduler:
    cards = [gpu(f"GPU-{x}", index=i) for i, x in enumerate("ABCD")]
    return scheduler(node("n1", cards, pair_scores=PAIRS), gpu_policy=default)


def test_topology_aware_single_card_takes_the_least_connected() -> None:
    assert chosen(topo_scheduler().decide(small())) == [["GPU-D"]]  # plain spread: highest index
    assert chosen(topo_scheduler().decide(small(policy="topology-aware"))) == [["GPU-C"]]
    assert chosen(topo_scheduler("topology-aware").decide(small())) == [["GPU-C"]]


def test_topology_aware_pair_takes_the_best_connected_pair() -> None:
    plain = topo_scheduler().decide(gpu_pod(gpu=2, mem=1000))
    assert chosen(plain) == [["GPU-D", "GPU-C"]]
    best = topo_scheduler().decide(
        gpu_pod(gpu=2, mem=1000, annotations={keys.GPU_SCHEDULER_POLICY: "topology-aware"})
    )
    assert sorted(chosen(best)[0]) == ["GPU-B", "GPU-D"]


def test_topology_aware_only_chooses_among_eligible_cards() -> None:
    sched = topo_scheduler()
    sched.decide(pinned("GPU-D", "wd", mem=16000, cores=0))
    best = sched.decide(gpu_pod(gpu=2, mem=1000, annotations={keys.GPU_SCHEDULER_POLICY: "topology-aware"}))
    assert sorted(chosen(best)[0]) == ["GPU-A", "GPU-C"]


def test_topology_aware_without_scores_falls_back_to_policy_order() -> None:
    cards = [gpu(f"GPU-{x}", index=i) for i, x in enumerate("ABCD")]
    sched = scheduler(node("n1", cards))
    d = sched.decide(gpu_pod(gpu=2, mem=1000, annotations={keys.GPU_SCHEDULER_POLICY: "topology-aware"}))
    assert chosen(d) == [["GPU-D", "GPU-C"]]


# --- scoring weights ----------------------------------------------------------------------------------------


def weights_scheduler() -> Scheduler:
    """GPU-a: 3 slots busy, 300 MiB; GPU-b: 1 slot, 8000 MiB. Cores unused on both."""
    sched = scheduler(node("n1", [gpu("GPU-a", index=0), gpu("GPU-b", index=1)]))
    for i in range(3):
        sched.decide(pinned("GPU-a", f"wa{i}", mem=100, cores=0))
    sched.decide(pinned("GPU-b", "wb", mem=8000, cores=0))
    return sched


@pytest.mark.parametrize(
    ("weights", "card"),
    [
        (None, "GPU-a"),  # default 1/1/1: b's memory (0.5) outweighs a's slots (0.3)
        ("slot=1,core=0,memory=0", "GPU-b"),
        ("slot=0,core=0,memory=1", "GPU-a"),
        ("slot=10,core=1,memory=1", "GPU-b"),
        ("memory=1, slot=0, core=0", "GPU-a"),
    ],
)
def test_scoring_weights_change_card_order(weights: str | None, card: str) -> None:
    ann = {} if weights is None else {keys.DEVICE_SCORING_WEIGHTS: weights}
    d = weights_scheduler().decide(gpu_pod(mem=100, cores=0, annotations=ann))
    assert chosen(d) == [[card]]


def test_pod_policy_resolution() -> None:
    got = pod_policy(
        {
            keys.NODE_SCHEDULER_POLICY: " Spread ",
            keys.GPU_SCHEDULER_POLICY: "binpack,numa",
            keys.DEVICE_SCORING_WEIGHTS: "slot=2,core=0,memory=1",
            keys.NVIDIA_NUMA_BIND: "true",
        },
        node_default="binpack",
        card_default="spread",
    )
    assert got.node_policy == "spread"
    assert got.card_policy.sort_keys == ("binpack", "numa")
    assert got.weights == ScoringWeights(slot=2, core=0, memory=1)
    assert got.numa_bind
    defaults = pod_policy({}, node_default="binpack", card_default="spread")
    assert (defaults.node_policy, defaults.card_policy.sort_keys, defaults.numa_bind) == (
        "binpack",
        ("spread",),
        False,
    )
    assert defaults.weights == ScoringWeights(1, 1, 1)


# --- bad annotations ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "needle"),
    [
        ({keys.GPU_SCHEDULER_POLICY: "best"}, "unknown GPU scheduler policy 'best'"),
        ({keys.GPU_SCHEDULER_POLICY: "binpack,fastest"}, "'fastest'"),
        ({keys.GPU_SCHEDULER_POLICY: ",,"}, "empty GPU scheduler policy"),
        ({keys.NODE_SCHEDULER_POLICY: "random"}, "unknown node policy 'random'"),
        ({keys.NODE_SCHEDULER_POLICY: "topology-aware"}, "unknown node policy"),
        ({keys.DEVICE_SCORING_WEIGHTS: "slot=1,core=1"}, "exactly slot, core and memory"),
        ({keys.DEVICE_SCORING_WEIGHTS: "slot=0,core=0,memory=0"}, "cannot all be 0"),
        ({keys.DEVICE_SCORING_WEIGHTS: "slot=-1,core=1,memory=1"}, "non-negative integer"),
        ({keys.DEVICE_SCORING_WEIGHTS: "slot=1,core=1,memory=1,gpu=1"}, "'gpu=1'"),
        ({keys.DEVICE_SCORING_WEIGHTS: "slot=1,slot=1,memory=1"}, "given twice"),
    ],
)
def test_bad_policy_annotations_give_a_clear_reason(annotations: dict[str, str], needle: str) -> None:
    key = next(iter(annotations))
    sched = scheduler(node("n1", [gpu("GPU-a")]))
    d = sched.decide(gpu_pod(mem=10, annotations=annotations))
    assert d.node is None
    assert d.invalid
    assert d.reason is not None
    assert key in d.reason
    assert needle in d.reason
    assert idle(sched.state)
    with pytest.raises(ProtocolError):
        pod_policy(annotations, node_default="binpack", card_default="spread")


def test_card_usage_follows_the_choice() -> None:
    sched = two_card_scheduler(gpu_policy="binpack")
    sched.decide(small())
    assert usage(sched.state, "n1") == {"GPU-a": (0, 0, 0), "GPU-b": (2, 5000, 30)}
