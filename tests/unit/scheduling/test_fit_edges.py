"""Fit edges the mutation run (docs/mutation.md) found untested: exact fits and what a pod's
earlier containers already took on a card that other pods use too."""

from __future__ import annotations

import pytest
from schedkit import MIG_1G, container, gpu, gpu_pod, mig_gpu, node, pod, scheduler, usage

from hami.protocol import keys
from hami.protocol.pod import decode_mig_allocations


@pytest.mark.parametrize(
    ("mem", "profile"), [(MIG_1G.memory_mb, "1g.5gb"), (MIG_1G.memory_mb + 1, "2g.10gb")]
)
def test_mig_profile_exact_memory_fit(mem: int, profile: str) -> None:
    """A request of exactly a profile's memory takes that profile; one MiB more takes the next."""
    sched = scheduler(node("n1", [mig_gpu("GPU-m")]))
    d = sched.decide(gpu_pod("p", mem=mem))
    assert d.node == "n1", d.reason
    [m] = decode_mig_allocations(d.annotations[keys.VGPU_MIG_ALLOCATIONS])
    assert m.profile == profile


@pytest.mark.parametrize(
    ("first", "each", "fits"),
    [
        # (what another pod holds, what each of two containers asks, whether both fit): 1 card
        ({"mem": 8000}, {"mem": 4000}, True),  # 8000 + 2 x 4000 = 16000: exactly the card
        ({"mem": 8001}, {"mem": 4000}, False),
        ({"mem": 1000, "cores": 40}, {"mem": 1000, "cores": 30}, True),  # 40 + 2 x 30 = 100 cores
        ({"mem": 1000, "cores": 41}, {"mem": 1000, "cores": 30}, False),
    ],
)
def test_second_container_sees_the_first_on_a_shared_card(
    first: dict[str, int], each: dict[str, int], fits: bool
) -> None:
    sched = scheduler(node("n1", [gpu("GPU-a", mem=16000, cores=100)]))
    assert sched.decide(gpu_pod("other", **first)).node == "n1"
    two = pod("two", container("a", gpu=1, **each), container("b", gpu=1, **each))
    assert (sched.decide(two).node == "n1") is fits
    if fits:
        expect = (3, first["mem"] + 2 * each["mem"], first.get("cores", 0) + 2 * each.get("cores", 0))
        assert usage(sched.state, "n1")["GPU-a"] == expect


def test_slot_count_counts_every_container_of_the_pod() -> None:
    """A card shared by 3 tasks at most, one held by another pod: a two-container pod fits, a
    three-container pod does not."""
    sched = scheduler(node("n1", [gpu("GPU-a", count=3)]))
    assert sched.decide(gpu_pod("other", mem=1000)).node == "n1"
    two = pod("two", *(container(c, gpu=1, mem=1000) for c in "ab"))
    three = pod("three", *(container(c, gpu=1, mem=1000) for c in "abc"))
    assert sched.decide(three).node is None
    assert sched.decide(two).node == "n1"
    assert usage(sched.state, "n1")["GPU-a"][0] == 3
