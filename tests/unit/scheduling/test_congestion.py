"""``decide(congested=...)``: congested nodes are tried after every other candidate, policy order kept."""

from __future__ import annotations

from schedkit import gpu, gpu_pod, node, scheduler


def three_nodes() -> list[dict[str, object]]:
    return [node(n, [gpu(f"GPU-{n}")]) for n in ("a", "b", "c")]


def test_binpack_skips_a_congested_node_but_keeps_policy_order() -> None:
    sched = scheduler(*three_nodes(), node_policy="binpack")
    assert sched.decide(gpu_pod("warm", mem=4000, cores=10)).node == "a"  # all equal: by name
    assert sched.decide(gpu_pod("p1", mem=1000, cores=10)).node == "a"  # binpack: the used node first
    # with 'a' congested, binpack still prefers the most used of the others
    sched.decide(gpu_pod("warm-c", mem=2000, cores=10), candidates=["c"])
    d = sched.decide(gpu_pod("p2", mem=1000, cores=10), congested={"a"})
    assert d.node == "c"


def test_congested_node_is_still_used_when_nothing_else_fits() -> None:
    sched = scheduler(*three_nodes(), node_policy="spread")
    d = sched.decide(gpu_pod("big", mem=9000, cores=10), candidates=["a"], congested={"a"})
    assert d.node == "a"


def test_no_congestion_is_plain_policy_order() -> None:
    a = scheduler(*three_nodes(), node_policy="spread")
    b = scheduler(*three_nodes(), node_policy="spread")
    for i in range(6):
        assert (
            a.decide(gpu_pod(f"p{i}", mem=1000, cores=5)).node
            == b.decide(gpu_pod(f"p{i}", mem=1000, cores=5), congested=frozenset()).node
        )
