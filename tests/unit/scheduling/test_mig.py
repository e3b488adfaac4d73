"""MIG mode cards: smallest fitting profile with a free placement, no overlap, the MIG annotation,
and the allocation decoded back from annotations and re-applied."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from schedkit import (
    MIG_1G,
    MIG_2G,
    MIG_3G,
    MIG_7G,
    chosen,
    gpu,
    gpu_pod,
    mig_gpu,
    node,
    scheduler,
    usage,
    with_annotations,
)

from hami.protocol import keys
from hami.protocol.pod import MigAllocation, decode_mig_allocations
from hami.scheduling import Decision, Scheduler


def migs(d: Decision) -> list[MigAllocation]:
    return decode_mig_allocations(d.annotations[keys.VGPU_MIG_ALLOCATIONS])


def layout(sched: Scheduler, uuid: str = "GPU-m", node_name: str = "n1") -> list[tuple[int, int]]:
    card = sched.state.nodes[node_name].by_uuid[uuid]
    return sorted(card.mig_in_use)


def overlaps(spans: list[tuple[int, int]]) -> bool:
    used: set[int] = set()
    for start, size in spans:
        cells = set(range(start, start + size))
        if used & cells:
            return True
        used |= cells
    return False


def test_request_takes_the_smallest_fitting_profile() -> None:
    sched = scheduler(node("n1", [mig_gpu("GPU-m")]))
    d = sched.decide(gpu_pod("p", mem=4000))
    assert d.node == "n1"
    (m,) = migs(d)
    assert (m.gpu_uuid, m.profile, m.container_index, m.device_index) == ("GPU-m", "1g.5gb", 0, 0)
    assert (m.placement_start, m.placement_size) == (6, 1)  # 1g profiles prefer high starts
    assert m.mig_uuid is None  # the device plugin fills the runtime identity
    # the wire record carries the profile's memory and cores, not the request's
    assert d.annotations[keys.VGPU_DEVICES_ALLOCATED] == "GPU-m,NVIDIA,4864,15:;"
    assert usage(sched.state, "n1") == {"GPU-m": (1, MIG_1G.memory_mb, MIG_1G.core)}
    assert layout(sched) == [(6, 1)]


def test_annotation_json_shape() -> None:
    d = scheduler(node("n1", [mig_gpu("GPU-m")])).decide(gpu_pod("p", mem=9000))
    assert orjson.loads(d.annotations[keys.VGPU_MIG_ALLOCATIONS]) == [
        {
            "containerIndex": 0,
            "deviceIndex": 0,
            "gpuUUID": "GPU-m",
            "profile": "2g.10gb",
            "placement": {"start": 0, "size": 2},  # other profiles prefer low starts
        }
    ]


def test_non_mig_decisions_carry_no_mig_annotation() -> None:
    d = scheduler(node("n1", [gpu("GPU-a")])).decide(gpu_pod("p", mem=10))
    assert keys.VGPU_MIG_ALLOCATIONS not in d.annotations


def test_placements_never_overlap() -> None:
    sched = scheduler(node("n1", [mig_gpu("GPU-m")]))
    profiles = []
    for i, mem in enumerate([4000, 4000, 9000, 4000, 9000]):
        d = sched.decide(gpu_pod(f"p{i}", mem=mem))
        assert d.node == "n1", d.reason
        profiles.append(migs(d)[0].profile)
    assert profiles == ["1g.5gb", "1g.5gb", "2g.10gb", "1g.5gb", "2g.10gb"]
    spans = layout(sched)
    assert not overlaps(spans)
    assert spans == [(0, 2), (2, 2), (4, 1), (5, 1), (6, 1)]
    # 5 of 7 instances are in use, yet every 1g slice (0..6) and both 3g halves are taken
    for name, mem in (("tiny", 1000), ("big", 15000)):
        d = sched.decide(gpu_pod(name, mem=mem))
        assert d.node is None
        assert d.failed["n1"] == "1/1 CardMigTopologyInfeasible"
    assert not overlaps(layout(sched))


def test_larger_profile_when_smaller_has_no_free_placement() -> None:
    only = (dataclasses.replace(MIG_1G, placements=MIG_1G.placements[:1]), MIG_2G)  # one 1g slot
    sched = scheduler(node("n1", [mig_gpu("GPU-m", profiles=only)]))
    first = sched.decide(gpu_pod("a", mem=1000))
    second = sched.decide(gpu_pod("b", mem=1000))
    assert [migs(first)[0].profile, migs(second)[0].profile] == ["1g.5gb", "2g.10gb"]
    assert layout(sched) == [(0, 1), (2, 2)]


def test_several_instances_on_one_gpu_for_one_container() -> None:
    sched = scheduler(node("n1", [mig_gpu("GPU-m")]))
    d = sched.decide(gpu_pod("p", gpu=3, mem=4000))  # more than the node's one card: fine for MIG
    assert d.node == "n1", d.reason
    assert chosen(d) == [["GPU-m", "GPU-m", "GPU-m"]]
    got = migs(d)
    assert [m.device_index for m in got] == [0, 1, 2]
    assert [(m.placement_start, m.placement_size) for m in got] == [(6, 1), (5, 1), (4, 1)]
    assert usage(sched.state, "n1") == {"GPU-m": (3, 3 * MIG_1G.memory_mb, 3 * MIG_1G.core)}


def test_instance_count_limits_mig_slices() -> None:
    sched = scheduler(node("n1", [mig_gpu("GPU-m")]))  # count 7
    assert sched.decide(gpu_pod("p", gpu=7, mem=1000)).node == "n1"
    d = sched.decide(gpu_pod("q", mem=1000))
    assert d.failed["n1"] == "1/1 CardTimeSlicingExhausted"


def test_vgpu_mode_steers_between_mig_and_hami_core() -> None:
    cards = [gpu("GPU-t", index=0), mig_gpu("GPU-m", index=1)]
    sched = scheduler(node("n1", cards))
    d = sched.decide(gpu_pod("a", mem=1000, annotations={keys.NVIDIA_VGPU_MODE: "mig"}))
    assert chosen(d) == [["GPU-m"]]
    assert keys.VGPU_MIG_ALLOCATIONS in d.annotations
    d = sched.decide(gpu_pod("b", mem=1000, annotations={keys.NVIDIA_VGPU_MODE: "hami-core"}))
    assert chosen(d) == [["GPU-t"]]
    assert keys.VGPU_MIG_ALLOCATIONS not in d.annotations


def test_second_container_sees_the_first_containers_instances() -> None:
    from schedkit import container, pod

    sched = scheduler(node("n1", [mig_gpu("GPU-m")]))
    d = sched.decide(pod("p", container("a", gpu=1, mem=15000), container("b", gpu=1, mem=15000)))
    assert d.node == "n1", d.reason
    got = migs(d)
    assert [(m.container_index, m.device_index, m.profile) for m in got] == [
        (0, 0, "3g.20gb"),
        (1, 0, "3g.20gb"),
    ]
    assert sorted((m.placement_start, m.placement_size) for m in got) == [(0, 4), (4, 4)]
    assert d.annotations[keys.VGPU_DEVICES_ALLOCATED] == "GPU-m,NVIDIA,19968,43:;GPU-m,NVIDIA,19968,43:;"


def test_allocation_decoded_from_annotations_is_reapplied() -> None:
    n = node("n1", [mig_gpu("GPU-m")])
    sched = scheduler(n)
    pods: list[dict[str, Any]] = []
    for i, mem in enumerate([4000, 9000, 4000]):
        p = gpu_pod(f"p{i}", mem=mem)
        d = sched.decide(p)
        pods.append(with_annotations(p, d.annotations, "n1"))
    # a restarted scheduler rebuilds the same usage and the same MIG layout from the pods alone
    again = scheduler(n)
    for p in pods:
        alloc = again.allocation_of(p, "n1")
        assert alloc is not None
        again.state.add_pod(alloc)
    assert usage(again.state, "n1") == usage(sched.state, "n1")
    assert layout(again) == layout(sched) == [(0, 2), (5, 1), (6, 1)]
    # and the next decision avoids the recorded placements on both
    a = migs(sched.decide(gpu_pod("next", mem=9000)))[0]
    b = migs(again.decide(gpu_pod("next", mem=9000)))[0]
    assert (a.placement_start, a.placement_size) == (b.placement_start, b.placement_size) == (2, 2)


def test_removing_a_pod_frees_its_placement() -> None:
    sched = scheduler(node("n1", [mig_gpu("GPU-m")]))
    d = sched.decide(gpu_pod("p", mem=40000))
    assert migs(d)[0].profile == MIG_7G.name
    assert layout(sched) == [(0, 8)]
    assert sched.decide(gpu_pod("q", mem=1)).node is None
    sched.state.remove_pod("uid-p")
    assert layout(sched) == []
    assert usage(sched.state, "n1") == {"GPU-m": (0, 0, 0)}
    assert sched.decide(gpu_pod("q", mem=1)).node == "n1"


def test_percentage_requests_resolve_against_the_gpu_memory() -> None:
    sched = scheduler(node("n1", [mig_gpu("GPU-m")]))
    d = sched.decide(gpu_pod("p", pct=40))  # 40% of 40960 = 16384 MiB -> 3g.20gb
    assert migs(d)[0].profile == MIG_3G.name


def test_init_container_instances_stay_reserved_for_the_pods_lifetime() -> None:
    """MIG instances are created at admission for every container and destroyed at pod teardown."""
    from schedkit import container, pod

    sched = scheduler(node("n1", [mig_gpu("GPU-m")]))
    p = pod("p", container("app", gpu=1, mem=4000), init=[container("init", gpu=1, mem=9000)])
    d = sched.decide(p)
    assert d.node == "n1", d.reason
    got = migs(d)
    assert [(m.container_index, m.profile, m.placement_start) for m in got] == [
        (0, "2g.10gb", 0),
        (1, "1g.5gb", 6),
    ]
    # nobody else may take the init container's slices
    assert layout(sched) == [(0, 2), (6, 1)]
    other = migs(sched.decide(gpu_pod("other", mem=9000)))[0]
    assert (other.placement_start, other.placement_size) == (2, 2)
    sched.state.remove_pod("uid-other")
    # init finished: its memory and cores go, its instance stays until the pod goes
    assert sched.state.release_init("uid-p")
    assert usage(sched.state, "n1") == {"GPU-m": (1, MIG_1G.memory_mb, MIG_1G.core)}
    assert layout(sched) == [(0, 2), (6, 1)]
    sched.state.remove_pod("uid-p")
    assert layout(sched) == []


def test_a_pods_instances_never_overlap_each_other() -> None:
    """Init and app instances coexist, so the pod's own containers must not share slices."""
    from schedkit import container, pod

    sched = scheduler(node("n1", [mig_gpu("GPU-m")]))
    p = pod(
        "p",
        container("app1", gpu=1, mem=4000),
        container("app2", gpu=1, mem=4000),
        init=[container("init1", gpu=1, mem=4000), container("init2", gpu=1, mem=4000)],
    )
    d = sched.decide(p)
    assert d.node == "n1", d.reason
    spans = [(m.placement_start, m.placement_size) for m in migs(d)]
    assert len(spans) == 4
    assert not overlaps(spans), spans
    assert layout(sched) == sorted(spans)
