"""Namespace quota (HAMi semantics): ``limits.<memory|cores resource>`` of a ResourceQuota, usage from
actual placements, checked by ``Scheduler.decide`` per node and kept with the ledger."""

from __future__ import annotations

from typing import Any

from schedkit import container, gpu, node, pod, scheduler, with_annotations

from hami.config import NvidiaConfig
from hami.devices import BackendRegistry
from hami.devices.cambricon import CambriconBackend
from hami.devices.nvidia import NvidiaBackend
from hami.scheduling import Scheduler
from hami.scheduling.quota import QuotaLedger

MEM = "nvidia.com/gpumem"
CORES = "nvidia.com/gpucores"


def gpu_pod_in(name: str, ns: str = "team-a", **res: Any) -> dict[str, Any]:
    res.setdefault("gpu", 1)
    return pod(name, container("main", **res), namespace=ns)


def quota(sched: Scheduler, hard: dict[str, Any], *, ns: str = "team-a", name: str = "gpu") -> None:
    sched.state.set_quota(ns, name, hard)


def used(sched: Scheduler, ns: str = "team-a") -> dict[str, int]:
    return dict(sched.state.quota.used.get(ns, {}))


def two_nodes() -> Scheduler:
    return scheduler(node("n1", [gpu("GPU-a"), gpu("GPU-b", index=1)]), node("n2", [gpu("GPU-c")]))


# --- the edge ----------------------------------------------------------------------------------------------


def test_exactly_at_the_limit_is_accepted_one_mib_over_is_refused() -> None:
    sched = two_nodes()
    quota(sched, {f"limits.{MEM}": "8000"})
    assert sched.decide(gpu_pod_in("a", mem=5000)).node is not None
    assert sched.decide(gpu_pod_in("b", mem=3000)).node is not None  # 8000 of 8000
    assert used(sched) == {MEM: 8000}
    d = sched.decide(gpu_pod_in("c", mem=1))
    assert d.node is None
    assert d.reason is not None
    assert "namespace team-a" in d.reason
    assert f"limits.{MEM}" in d.reason
    assert "limit 8000, used 8000, asked 1 MiB" in d.reason
    assert "ResourceQuota gpu" in d.reason
    assert used(sched) == {MEM: 8000}  # the refused pod reserved nothing


def test_one_mib_over_on_a_fresh_namespace() -> None:
    sched = two_nodes()
    quota(sched, {f"limits.{MEM}": "8000"})
    d = sched.decide(gpu_pod_in("big", mem=8001))
    assert d.node is None and "limit 8000, used 0, asked 8001 MiB" in (d.reason or "")
    assert sched.decide(gpu_pod_in("fits", mem=8000)).node is not None


def test_explicit_zero_blocks_and_asking_nothing_of_it_passes() -> None:
    sched = two_nodes()
    quota(sched, {f"limits.{MEM}": "16000", f"limits.{CORES}": "0"})
    d = sched.decide(gpu_pod_in("a", mem=1000, cores=10))
    assert d.node is None and f"limits.{CORES}" in (d.reason or "") and "limit 0" in (d.reason or "")
    assert sched.decide(gpu_pod_in("b", mem=1000, cores=0)).node is not None


def test_cores_are_limited() -> None:
    sched = two_nodes()
    quota(sched, {f"limits.{CORES}": "50"})
    assert sched.decide(gpu_pod_in("a", mem=1000, cores=30)).node is not None
    d = sched.decide(gpu_pod_in("b", mem=1000, cores=30))
    assert d.node is None and "limit 50, used 30, asked 30 percent of a card" in (d.reason or "")


# --- what counts --------------------------------------------------------------------------------------------


def test_percentage_counts_the_mib_taken_on_the_chosen_card() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a", mem=16000)]))
    quota(sched, {f"limits.{MEM}": "8000"})
    assert sched.decide(gpu_pod_in("half", pct=50)).node == "n1"
    assert used(sched) == {MEM: 8000}
    d = sched.decide(gpu_pod_in("more", pct=1))
    assert d.node is None and "asked 160 MiB" in (d.reason or "")


def test_percentage_picks_a_node_whose_card_fits_the_quota() -> None:
    """A percentage of a smaller card is fewer MiB: a node whose card would go over is skipped."""
    sched = scheduler(node("big", [gpu("GPU-big", mem=40000)]), node("small", [gpu("GPU-small", mem=10000)]))
    quota(sched, {f"limits.{MEM}": "10000"})
    d = sched.decide(gpu_pod_in("p", pct=50))
    assert d.node == "small"
    assert "asked 20000 MiB" in d.failed.get("big", "")


def test_multi_card_request_counts_every_card() -> None:
    sched = two_nodes()
    quota(sched, {f"limits.{MEM}": "10000", f"limits.{CORES}": "100"})
    d = sched.decide(gpu_pod_in("two", gpu=2, mem=4000, cores=40))
    assert d.node == "n1"
    assert used(sched) == {MEM: 8000, CORES: 80}
    assert sched.decide(gpu_pod_in("edge", gpu=2, mem=1000, cores=10)).node == "n1"  # 10000 of 10000
    d = sched.decide(gpu_pod_in("again", gpu=2, mem=1, cores=0))
    assert d.node is None and "used 10000, asked 2 MiB" in (d.reason or "")


def test_init_and_app_containers_count_collapsed() -> None:
    """Init containers run one at a time: a pod counts max(init, app) per card, as the ledger does."""
    sched = scheduler(node("n1", [gpu("GPU-a")]))
    quota(sched, {f"limits.{MEM}": "3000"})
    p = pod(
        "p", container("app", gpu=1, mem=2000), init=[container("init", gpu=1, mem=3000)], namespace="team-a"
    )
    assert sched.decide(p).node == "n1"
    assert used(sched) == {MEM: 3000}
    assert sched.state.release_init("uid-p")
    assert used(sched) == {MEM: 2000}


def test_memory_factor_scales_the_quota_like_the_request() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a", mem=16384)]), config=NvidiaConfig(memory_factor=1024))
    quota(sched, {f"limits.{MEM}": "8"})  # 8 GiB
    assert sched.state.quota.limits["team-a"][MEM].value == 8192
    assert sched.decide(gpu_pod_in("a", mem=6)).node == "n1"  # 6144 MiB
    d = sched.decide(gpu_pod_in("b", mem=3))
    assert d.node is None and "limit 8192, used 6144, asked 3072 MiB" in (d.reason or "")
    assert sched.decide(gpu_pod_in("c", mem=2)).node == "n1"  # exactly 8192


def test_another_vendor_names_its_own_resources() -> None:
    reg = BackendRegistry([NvidiaBackend(), CambriconBackend()])
    q = QuotaLedger()
    for b in reg:
        q.set_vendor(b.vendor, b.quota_names)  # type: ignore[attr-defined]
    assert "cambricon.com/mlu.smlu.vmemory" in q.resources
    assert q.resources["cambricon.com/mlu.smlu.vmemory"].factor == 256
    q.set_quota("ns", "q", {"limits.cambricon.com/mlu.smlu.vmemory": "4"})
    assert q.limits["ns"]["cambricon.com/mlu.smlu.vmemory"].value == 1024


# --- life cycle -----------------------------------------------------------------------------------------------


def test_release_on_delete_and_reschedule_drops_the_old_reservation() -> None:
    sched = two_nodes()
    quota(sched, {f"limits.{MEM}": "8000"})
    p = gpu_pod_in("a", mem=8000)
    d = sched.decide(p)
    assert d.node is not None
    # deciding the same pod again replaces its reservation instead of counting it twice
    assert sched.decide(p).node is not None
    assert used(sched) == {MEM: 8000}
    sched.state.remove_pod("uid-a")
    assert used(sched) == {MEM: 0}
    assert sched.decide(gpu_pod_in("b", mem=8000)).node is not None


def test_a_namespace_gets_its_first_quota_after_its_pods() -> None:
    """Pods already in the ledger (bound before the quota was seen, or at restart) are counted."""
    sched = two_nodes()
    d = sched.decide(gpu_pod_in("early", mem=6000))
    assert d.node is not None
    alloc = sched.allocation_of(
        with_annotations(gpu_pod_in("early", mem=6000), d.annotations, d.node), d.node
    )
    assert alloc is not None
    sched.state.add_pod(alloc)
    quota(sched, {f"limits.{MEM}": "8000"})
    assert used(sched) == {MEM: 6000}
    assert sched.decide(gpu_pod_in("late", mem=3000)).node is None


def test_other_namespaces_and_unlimited_resources_are_untouched() -> None:
    sched = two_nodes()
    quota(sched, {f"limits.{MEM}": "1000"})
    assert sched.decide(gpu_pod_in("elsewhere", ns="team-b", mem=9000)).node is not None
    assert "team-b" not in sched.state.quota.used
    quota(sched, {"limits.nvidia.com/gpu": "1", "requests.cpu": "2"}, ns="team-c")
    assert not sched.state.quota.limited("team-c")  # no device memory/cores limit: hami ignores it


def test_several_quotas_in_a_namespace_the_smallest_wins_and_removal_lifts_it() -> None:
    sched = two_nodes()
    quota(sched, {f"limits.{MEM}": "8000"}, name="wide")
    quota(sched, {f"limits.{MEM}": "2000"}, name="narrow")
    d = sched.decide(gpu_pod_in("a", mem=3000))
    assert d.node is None and "ResourceQuota narrow" in (d.reason or "")
    sched.state.remove_quota("team-a", "narrow")
    assert sched.decide(gpu_pod_in("a", mem=3000)).node is not None
    sched.state.remove_quota("team-a", "wide")
    assert not sched.state.quota.limited("team-a")
    assert "team-a" not in sched.state.quota.used


def test_quota_counts_reservations_so_racing_pods_cannot_both_take_the_last_of_it() -> None:
    sched = two_nodes()
    quota(sched, {f"limits.{MEM}": "4000"})
    first = sched.decide(gpu_pod_in("one", mem=4000))
    second = sched.decide(gpu_pod_in("two", mem=4000))
    assert (first.node is None) != (second.node is None)


def test_bad_quantity_is_ignored_and_recorded() -> None:
    q = QuotaLedger()
    q.set_vendor("NVIDIA", NvidiaBackend().quota_names)
    q.set_quota("ns", "q", {f"limits.{MEM}": "lots", f"limits.{CORES}": "50"})
    assert q.limits["ns"][CORES].value == 50
    assert MEM not in q.limits["ns"]
    assert f"limits.{MEM}" in q.errors[("ns", "q")]
    q.set_quota("ns", "q", {f"limits.{CORES}": "50"})
    assert ("ns", "q") not in q.errors


def test_usage_is_always_the_sum_over_the_ledgers_pods() -> None:
    """The invariant under a random stream of decisions, removals, init releases and quota changes."""
    import random

    from hami.scheduling.quota import charge_of

    rng = random.Random(17)
    sched = scheduler(*(node(f"n{i}", [gpu(f"GPU-{i}-{j}", index=j) for j in range(4)]) for i in range(3)))
    state = sched.state
    for step in range(400):
        ns = rng.choice(["team-a", "team-b"])
        roll = rng.random()
        if roll < 0.5:
            init = [container("init", gpu=1, mem=rng.randint(1, 4000))] if rng.random() < 0.3 else []
            kw: dict[str, Any] = {"gpu": rng.randint(1, 2), "cores": rng.randint(0, 30)}
            kw["pct" if rng.random() < 0.3 else "mem"] = rng.randint(1, 40) if rng.random() < 0.3 else 1000
            sched.decide(pod(f"p{step}", container("main", **kw), init=init, namespace=ns))
        elif roll < 0.75 and state.pods:
            state.remove_pod(rng.choice(sorted(state.pods)))
        elif roll < 0.85 and state.pods:
            state.release_init(rng.choice(sorted(state.pods)))
        elif roll < 0.95:
            quota(sched, {f"limits.{MEM}": str(rng.randint(0, 60000))}, ns=ns, name=rng.choice(["q1", "q2"]))
        else:
            state.remove_quota(ns, rng.choice(["q1", "q2"]))
        q = state.quota
        for limited in q.limits:
            want: dict[str, int] = {}
            for alloc in state.pods.values():
                if alloc.namespace == limited:
                    for res, v in charge_of(alloc, {"NVIDIA": {True: MEM, False: CORES}}).items():
                        want[res] = want.get(res, 0) + v
            assert {k: v for k, v in q.used[limited].items() if v} == want, step
        assert set(q.used) == set(q.limits)
