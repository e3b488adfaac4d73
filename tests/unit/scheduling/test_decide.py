"""Scheduler.decide end to end: the annotations (per-vendor padding, F1), re-scheduling without stale
reservations (F2), invalid pods, determinism, and the annotation round trip back into the ledger."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from schedkit import (
    all_usage,
    chosen,
    container,
    gpu,
    gpu_pod,
    idle,
    node,
    pod,
    scheduler,
    usage,
    with_annotations,
)

from hami.config import NvidiaConfig
from hami.devices import BackendRegistry, RequestError
from hami.devices.nvidia import NvidiaBackend
from hami.protocol import keys
from hami.protocol.node import encode_node_devices
from hami.protocol.pod import decode_pod_devices
from hami.scheduling import Scheduler, pod_requests
from hami.scheduling.requests import check_against_largest_card

ALLOCATED = keys.VGPU_DEVICES_ALLOCATED
TO_ALLOCATE = keys.VGPU_DEVICES_TO_ALLOCATE


# --- annotations and padding (F1) ----------------------------------------------------------------------------


def test_decision_annotations() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a")]))
    d = sched.decide(gpu_pod("p", mem=3000, cores=30), now=1700000000)
    assert d.node == "n1"
    assert d.pod == "default/p"
    assert d.reason is None
    assert not d.invalid
    assert d.annotations == {
        keys.VGPU_NODE: "n1",
        keys.VGPU_TIME: "1700000000",
        TO_ALLOCATE: "GPU-a,NVIDIA,3000,30:;",
        ALLOCATED: "GPU-a,NVIDIA,3000,30:;",
    }


def test_istio_shape_pod_is_padded_per_vendor_key() -> None:
    """HAMi v2.10 finding F1: init without GPU + app with GPU + sidecar must not shift the entries."""
    sched = scheduler(node("n1", [gpu("GPU-x", type="NVIDIA-Tesla T4")]))
    p = pod(
        "mesh",
        container("app", gpu=1, mem=3000, cores=30),
        container("istio-proxy"),
        init=[container("istio-init")],
    )
    d = sched.decide(p)
    assert d.node == "n1", d.reason
    assert d.annotations[ALLOCATED] == ";GPU-x,NVIDIA,3000,30:;;"
    assert d.annotations[TO_ALLOCATE] == ";GPU-x,NVIDIA,3000,30:;;"
    # the vendor key, not the card model, is what the device records carry
    assert decode_pod_devices(d.annotations[ALLOCATED])[1][0].type == "NVIDIA"
    assert len(decode_pod_devices(d.annotations[ALLOCATED])) == 3  # one entry per container
    # the app usage is app usage: it survives the init containers finishing
    assert usage(sched.state, "n1") == {"GPU-x": (1, 3000, 30)}
    assert sched.state.release_init("uid-mesh")
    assert usage(sched.state, "n1") == {"GPU-x": (1, 3000, 30)}


def test_padding_matches_the_reference_example() -> None:
    sched = scheduler(
        # indices reversed: equal cards go highest index first (HAMi), so c1 takes aaaa as in the reference
        node("n1", [gpu("GPU-cccc", index=0), gpu("GPU-bbbb", index=1), gpu("GPU-aaaa", index=2)])
    )
    p = pod(
        "ref",
        container("c1", gpu=1, mem=3000, cores=30),
        container("c2", gpu=2, mem=5000, cores=0),
        init=[container("init")],
    )
    d = sched.decide(p)
    assert (
        d.annotations[ALLOCATED]
        == ";GPU-aaaa,NVIDIA,3000,30:;GPU-bbbb,NVIDIA,5000,0:GPU-cccc,NVIDIA,5000,0:;"
    )


def test_gpu_containers_between_empty_ones_keep_their_index() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a", index=0), gpu("GPU-b", index=1)]))
    p = pod(
        "p",
        container("a"),
        container("b", gpu=1, mem=10, cores=1),
        container("c"),
        container("d", gpu=1, mem=20, cores=2),
        init=[container("i1"), container("i2", gpu=1, mem=30, cores=3)],
    )
    d = sched.decide(p)
    entries = decode_pod_devices(d.annotations[ALLOCATED])
    assert [[(x.usedmem, x.usedcores) for x in e] for e in entries] == [
        [],
        [(30, 3)],
        [],
        [(10, 1)],
        [],
        [(20, 2)],
    ]
    assert [len(c) for c in d.placements[keys.VENDOR_NVIDIA]] == [0, 1, 0, 1, 0, 1]


def test_multi_card_container_gets_distinct_cards() -> None:
    sched = scheduler(node("n1", [gpu(f"GPU-{i}", index=i) for i in range(4)]))
    d = sched.decide(gpu_pod("p", gpu=3, mem=100))
    (cards,) = chosen(d)
    assert len(set(cards)) == 3


def test_app_containers_stack_on_one_node() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a")]))
    d = sched.decide(
        pod("p", container("a", gpu=1, mem=6000, cores=40), container("b", gpu=1, mem=6000, cores=40))
    )
    assert chosen(d) == [["GPU-a"], ["GPU-a"]]
    assert usage(sched.state, "n1") == {"GPU-a": (2, 12000, 80)}


# --- re-scheduling (F2) --------------------------------------------------------------------------------------------


def test_redecide_drops_the_old_reservation_when_a_is_no_longer_a_candidate() -> None:
    sched = scheduler(node("A", [gpu("GPU-a")]), node("B", [gpu("GPU-b", health=False)]))
    p = gpu_pod("p", mem=4000, cores=20)
    assert sched.decide(p).node == "A"
    assert usage(sched.state, "A") == {"GPU-a": (1, 4000, 20)}
    d = sched.decide(p, candidates=["B"])
    assert d.node is None
    assert usage(sched.state, "A") == {"GPU-a": (0, 0, 0)}
    assert "uid-p" not in sched.state.pods
    assert idle(sched.state)


def test_redecide_drops_the_old_reservation_when_a_no_longer_fits() -> None:
    n_a = node("A", [gpu("GPU-a")])
    sched = scheduler(n_a)
    p = gpu_pod("p", mem=4000, cores=20)
    assert sched.decide(p).node == "A"
    # the card turns unhealthy: the pod is re-filtered and fits nowhere
    assert sched.observe_node(node("A", [gpu("GPU-a", health=False)])) is None
    d = sched.decide(p)
    assert d.node is None
    assert d.failed == {"A": "1/1 CardNotHealth"}
    assert sched.state.pods == {}
    assert sched.state.pods_on("A") == []
    # healthy again: nothing was left behind
    assert sched.observe_node(n_a) is None
    assert idle(sched.state)


def test_redecide_moves_the_reservation() -> None:
    sched = scheduler(node("A", [gpu("GPU-a")]), node("B", [gpu("GPU-b")]))
    p = gpu_pod("p", mem=4000, cores=20)
    assert sched.decide(p, candidates=["A"]).node == "A"
    assert sched.decide(p, candidates=["B"]).node == "B"
    assert all_usage(sched.state) == {"A": {"GPU-a": (0, 0, 0)}, "B": {"GPU-b": (1, 4000, 20)}}


def test_redecide_does_not_count_its_own_reservation() -> None:
    sched = scheduler(node("A", [gpu("GPU-a")]))
    p = gpu_pod("p", mem=10000, cores=60)
    assert sched.decide(p).node == "A"
    assert sched.decide(p).node == "A"  # would not fit if its first reservation still counted
    assert usage(sched.state, "A") == {"GPU-a": (1, 10000, 60)}


def test_redecide_of_an_invalid_pod_drops_the_old_reservation() -> None:
    sched = scheduler(node("A", [gpu("GPU-a")]))
    p = gpu_pod("p", mem=4000)
    assert sched.decide(p).node == "A"
    bad = copy.deepcopy(p)
    bad["metadata"]["annotations"][keys.GPU_SCHEDULER_POLICY] = "nope"
    d = sched.decide(bad)
    assert d.invalid
    assert idle(sched.state)


def test_unschedulable_pod_reserves_nothing() -> None:
    sched = scheduler(node("A", [gpu("GPU-a")]), node("B", [gpu("GPU-b")]))
    d = sched.decide(gpu_pod("p", gpu=2, mem=10))
    assert d.node is None
    assert d.annotations == {}
    assert d.placements == {}
    assert idle(sched.state)
    assert sched.state.pods == {}


def test_reserve_false_decides_without_recording() -> None:
    sched = scheduler(node("A", [gpu("GPU-a")]))
    d = sched.decide(gpu_pod("p", mem=10), reserve=False)
    assert d.node == "A"
    assert idle(sched.state)


def test_candidates_limit_the_nodes_and_unknown_ones_are_reported() -> None:
    sched = scheduler(node("A", [gpu("GPU-a")]), node("B", [gpu("GPU-b")]))
    d = sched.decide(gpu_pod("p", mem=10), candidates=["ghost", "B"])
    assert d.node == "B"
    assert d.failed == {"ghost": "node unregistered"}
    d = sched.decide(gpu_pod("q", mem=10), candidates=[])
    assert d.node is None
    assert d.reason == "0/0 nodes are available"
    assert scheduler().decide(gpu_pod("r", mem=10)).reason == "0/0 nodes are available"


def test_corrupt_node_is_reported_by_name() -> None:
    sched = scheduler(node("A", [gpu("GPU-a")]))
    bad = {"metadata": {"name": "B", "annotations": {keys.NODE_NVIDIA_REGISTER: "[{"}}}
    error = sched.observe_node(bad)
    assert error is not None and error.startswith("node B: ")
    d = sched.decide(gpu_pod("p", mem=10), candidates=["B"])
    assert d.node is None
    assert d.failed["B"] == error


# --- invalid pods ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ctr", "needle"),
    [
        (container("train", gpu=-1), "nvidia.com/gpu: -1 must not be negative"),
        (container("train", gpu=1, cores=101), "nvidia.com/gpucores: 101"),
        (container("train", gpu=1, pct=150), "nvidia.com/gpumem-percentage: 150"),
        (container("train", gpu="1.5"), "nvidia.com/gpu: '1.5' must be a whole number"),
        (
            container("train", gpu=1, mem=16001),
            "nvidia.com/gpumem: 16001 MiB is more than the largest NVIDIA card",
        ),
    ],
)
def test_invalid_pods_are_rejected_with_a_message_for_the_user(ctr: dict[str, Any], needle: str) -> None:
    sched = scheduler(node("n1", [gpu("GPU-a", mem=16000)]), node("n2", [gpu("GPU-b", mem=8000)]))
    d = sched.decide(pod("p", ctr))
    assert d.node is None
    assert d.invalid
    assert d.reason is not None
    assert "container 'train'" in d.reason
    assert needle in d.reason
    assert d.failed == {}
    assert idle(sched.state)


def test_memory_equal_to_the_largest_card_is_valid() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a", mem=16000)]), node("n2", [gpu("GPU-b", mem=8000)]))
    assert sched.decide(gpu_pod("p", mem=16000)).node == "n1"


def test_largest_card_check_scales_memory_and_ignores_percentages() -> None:
    cfg = NvidiaConfig(memory_factor=1024)
    sched = scheduler(node("n1", [gpu("GPU-a", mem=16384)]), config=cfg)
    assert sched.decide(gpu_pod("ok", mem=16)).node == "n1"  # 16 GiB
    sched.state.remove_pod("uid-ok")
    d = sched.decide(gpu_pod("big", mem=17))
    assert d.invalid
    assert "17408 MiB" in (d.reason or "")
    assert sched.decide(gpu_pod("pct", pct=100)).node == "n1"


def test_check_against_largest_card_directly() -> None:
    sched = scheduler()
    req = pod_requests(pod("p", container("c0"), container("big", gpu=1, mem=9000)), sched.registry)
    check_against_largest_card(req, {"NVIDIA": 9000}, sched.registry)
    check_against_largest_card(req, {}, sched.registry)  # no card of the vendor: nothing to compare
    with pytest.raises(RequestError) as info:
        check_against_largest_card(req, {"NVIDIA": 8999}, sched.registry)
    assert (info.value.container, info.value.resource) == ("big", "nvidia.com/gpumem")
    assert "9000 MiB is more than the largest NVIDIA card in the cluster (8999 MiB)" in str(info.value)


def test_pod_without_device_requests_is_not_ours() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a")]))
    d = sched.decide(pod("p", container("web")))
    assert d.node is None
    assert d.invalid
    assert d.reason == "pod requests no managed device"


def test_non_object_container_is_a_request_error() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a")]))
    bad = pod("p")
    bad["spec"]["containers"] = ["oops"]
    d = sched.decide(bad)
    assert d.invalid
    assert "container must be an object" in (d.reason or "")


def test_malformed_resources_through_decide() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a")]))
    bad = pod("p", {"name": "train", "resources": ["nvidia.com/gpu"]})
    d = sched.decide(bad)
    assert d.invalid
    assert "container 'train'" in (d.reason or "")


def test_pod_requests_orders_init_first() -> None:
    req = pod_requests(
        pod("p", container("app", gpu=1, mem=10), init=[container("i1"), container("i2", gpu=2, mem=5)]),
        scheduler().registry,
    )
    assert [(c.name, c.init) for c in req.containers] == [("i1", True), ("i2", True), ("app", False)]
    assert req.init_count == 2
    assert req.vendors == ["NVIDIA"]
    assert not req.empty
    assert req.containers[1].devices["NVIDIA"].count == 2
    assert req.containers[0].devices == {}


# --- determinism and round trip -------------------------------------------------------------------------------------


def cluster() -> list[dict[str, Any]]:
    return [node(f"n{i}", [gpu(f"GPU-{i}-{j}", index=j, numa=j // 2) for j in range(4)]) for i in range(3)]


def workload() -> list[dict[str, Any]]:
    out = []
    for i in range(12):
        ann = {}
        if i % 3 == 0:
            ann[keys.GPU_SCHEDULER_POLICY] = "binpack"
        if i % 4 == 0:
            ann[keys.NODE_SCHEDULER_POLICY] = "spread"
        out.append(
            pod(
                f"w{i}",
                container("a", gpu=1 + i % 2, mem=1000 + 500 * i, cores=10 * (i % 4)),
                container("side"),
                init=[container("init", gpu=1, mem=2000)] if i % 5 == 0 else [],
                annotations=ann,
            )
        )
    return out


def run(policy: str) -> tuple[list[tuple[str | None, dict[str, str]]], dict[str, Any]]:
    sched = scheduler(*cluster(), node_policy=policy)
    decisions = [sched.decide(p, now=42) for p in workload()]
    return [(d.node, d.annotations) for d in decisions], all_usage(sched.state)


@pytest.mark.parametrize("policy", ["binpack", "spread"])
def test_same_input_same_output(policy: str) -> None:
    assert run(policy) == run(policy)


def test_decide_does_not_mutate_the_pod() -> None:
    sched = scheduler(*cluster())
    p = workload()[0]
    before = copy.deepcopy(p)
    sched.decide(p)
    assert p == before


@pytest.mark.parametrize("policy", ["binpack", "spread"])
def test_round_trip_annotations_rebuild_the_same_usage(policy: str) -> None:
    nodes = cluster()
    sched = scheduler(*nodes, node_policy=policy)
    bound = []
    for p in workload():
        d = sched.decide(p)
        assert d.node is not None, d.reason
        bound.append(with_annotations(p, d.annotations, d.node))
    rebuilt: Scheduler = scheduler(*nodes)
    for p in bound:
        alloc = rebuilt.allocation_of(p, p["spec"]["nodeName"])
        assert alloc is not None
        assert alloc.node == p["spec"]["nodeName"]
        assert alloc.init_count == len(p["spec"].get("initContainers", []))
        assert alloc.containers == sched.state.pods[alloc.uid].containers
        rebuilt.state.add_pod(alloc)
    assert all_usage(rebuilt.state) == all_usage(sched.state)
    assert sorted(rebuilt.state.pods) == sorted(sched.state.pods)


@pytest.mark.parametrize(
    "annotations",
    [
        {ALLOCATED: "GPU-a,NVIDIA,lots,0:;"},
        {ALLOCATED: "GPU-a,NVIDIA:;"},
        {ALLOCATED: "GPU-a,NVIDIA,1,0:;", keys.VGPU_MIG_ALLOCATIONS: "[{"},
        {ALLOCATED: "GPU-a,NVIDIA,1,0:;", keys.VGPU_MIG_ALLOCATIONS: '[{"containerIndex":0}]'},
    ],
    ids=["mem", "fields", "mig-json", "mig-fields"],
)
def test_corrupt_allocation_annotations_raise_protocol_error(annotations: dict[str, str]) -> None:
    from hami.protocol import ProtocolError

    sched = scheduler(node("n1", [gpu("GPU-a")]))
    with pytest.raises(ProtocolError):
        sched.allocation_of(gpu_pod("p", annotations=annotations), "n1")
    assert idle(sched.state)


# --- a second vendor: padding is per vendor key -------------------------------------------------------------------


class OtherBackend(NvidiaBackend):
    """A stand-in second vendor: NVIDIA's mechanics under other names and keys."""

    vendor = "OTHER"
    allocated_key = "other.example/devices-allocated"
    to_allocate_key = "other.example/devices-to-allocate"
    register_key = "other.example/node-register"


def two_vendor_scheduler() -> Scheduler:
    other_cfg = NvidiaConfig(
        resource_count_name="other.example/dev",
        resource_memory_name="other.example/mem",
        resource_memory_percentage_name="other.example/mem-percentage",
        resource_core_name="other.example/cores",
        resource_priority_name="other.example/priority",
    )
    sched = Scheduler(BackendRegistry([NvidiaBackend(), OtherBackend(other_cfg)]))
    n = node("n1", [gpu("GPU-n")])
    n["metadata"]["annotations"][OtherBackend.register_key] = encode_node_devices(
        [gpu("OTH-o", type="Other-X1")]
    )
    assert sched.observe_node(n) is None
    return sched


def other(name: str, mem: int) -> dict[str, Any]:
    return {"name": name, "resources": {"limits": {"other.example/dev": 1, "other.example/mem": mem}}}


def test_each_vendor_annotation_has_one_entry_per_container() -> None:
    sched = two_vendor_scheduler()
    p = pod(
        "p",
        other("o", 100),
        container("n", gpu=1, mem=200, cores=5),
        container("side"),
        init=[container("init")],
    )
    d = sched.decide(p)
    assert d.node == "n1", d.reason
    assert d.annotations[ALLOCATED] == ";;GPU-n,NVIDIA,200,5:;;"
    assert d.annotations[OtherBackend.allocated_key] == ";OTH-o,OTHER,100,0:;;;"
    assert usage(sched.state, "n1") == {"GPU-n": (1, 200, 5), "OTH-o": (1, 100, 0)}
    # and both come back from the annotations
    rebuilt = two_vendor_scheduler()
    alloc = rebuilt.allocation_of(with_annotations(p, d.annotations, "n1"), "n1")
    assert alloc is not None
    assert set(alloc.containers) == {"NVIDIA", "OTHER"}
    rebuilt.state.add_pod(alloc)
    assert usage(rebuilt.state, "n1") == usage(sched.state, "n1")
    # the node score spans every vendor's cards
    assert rebuilt.state.nodes["n1"].total_count == 20


def test_a_vendor_missing_on_the_node_rejects_it() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a")]))
    sched.registry.register(OtherBackend(NvidiaConfig(resource_count_name="other.example/dev")))
    d = sched.decide(pod("p", other("o", 1)))
    assert d.node is None
    assert d.failed == {"n1": "0/0 OTHER NodeInsufficientDevice"}
