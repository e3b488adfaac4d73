"""The usage ledger: exact add/remove/replace, init-container collapse and release, node re-registration,
cards that appear later, and a hypothesis property against a from-scratch recomputation."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from schedkit import container, gpu, gpu_pod, node, pod, scheduler, usage, with_annotations

from hami.devices.nvidia import NvidiaCard as Card
from hami.devices.nvidia import NvidiaPlacement as Placement
from hami.protocol import keys
from hami.protocol.pod import ContainerDevice, MigAllocation
from hami.scheduling import ClusterState, PodAllocation


def dev(uuid: str, mem: int, cores: int, mig: tuple[int, int] | None = None) -> Placement:
    m = None
    if mig is not None:
        m = MigAllocation(
            container_index=0,
            device_index=0,
            gpu_uuid=uuid,
            profile="1g.5gb",
            placement_start=mig[0],
            placement_size=mig[1],
        )
    return Placement(device=ContainerDevice(uuid=uuid, type="NVIDIA", usedmem=mem, usedcores=cores), mig=m)


def alloc(
    uid: str, node_name: str, containers: list[tuple[Placement, ...]], init_count: int = 0
) -> PodAllocation:
    return PodAllocation(
        uid=uid,
        namespace="default",
        name=uid,
        node=node_name,
        containers={keys.VENDOR_NVIDIA: containers},
        init_count=init_count,
    )


def cards(*uuids: str) -> list[Card]:
    return [
        Card(
            uuid=u, vendor="NVIDIA", type="NVIDIA-Tesla T4", count=10, totalmem=16000, totalcores=100, index=i
        )
        for i, u in enumerate(uuids)
    ]


def state_with(**nodes: tuple[str, ...]) -> ClusterState:
    s = ClusterState()
    for name, uuids in nodes.items():
        s.set_node(name, cards(*uuids))
    return s


def card_usage(s: ClusterState, node_name: str) -> dict[str, tuple[int, int, int]]:
    return {c.uuid: (c.used, c.usedmem, c.usedcores) for c in s.nodes[node_name].cards}


def node_totals(s: ClusterState, node_name: str) -> tuple[int, int, int]:
    n = s.nodes[node_name]
    return (n.used, n.usedmem, n.usedcores)


# --- add / remove / replace --------------------------------------------------------------------------


def test_add_remove_replace_adjust_exactly() -> None:
    s = state_with(n1=("GPU-a", "GPU-b"))
    s.add_pod(alloc("p", "n1", [(dev("GPU-a", 1000, 10), dev("GPU-b", 2000, 20))]))
    s.add_pod(alloc("q", "n1", [(dev("GPU-a", 500, 5),)]))
    assert card_usage(s, "n1") == {"GPU-a": (2, 1500, 15), "GPU-b": (1, 2000, 20)}
    assert node_totals(s, "n1") == (3, 3500, 35)
    # replacing p: its old usage goes, the new one comes
    s.add_pod(alloc("p", "n1", [(dev("GPU-b", 700, 7),)]))
    assert card_usage(s, "n1") == {"GPU-a": (1, 500, 5), "GPU-b": (1, 700, 7)}
    removed = s.remove_pod("q")
    assert removed is not None and removed.uid == "q"
    assert s.remove_pod("q") is None
    assert card_usage(s, "n1") == {"GPU-a": (0, 0, 0), "GPU-b": (1, 700, 7)}
    assert [a.uid for a in s.pods_on("n1")] == ["p"]
    s.remove_pod("p")
    assert card_usage(s, "n1") == {"GPU-a": (0, 0, 0), "GPU-b": (0, 0, 0)}
    assert node_totals(s, "n1") == (0, 0, 0)
    assert s.pods == {}
    assert s.pods_on("n1") == []


def test_adding_the_same_allocation_twice_is_idempotent() -> None:
    s = state_with(n1=("GPU-a",))
    a = alloc("p", "n1", [(dev("GPU-a", 1000, 10),)])
    s.add_pod(a)
    s.add_pod(a)
    assert card_usage(s, "n1") == {"GPU-a": (1, 1000, 10)}


def test_replacing_onto_another_node_moves_the_usage() -> None:
    s = state_with(n1=("GPU-a",), n2=("GPU-b",))
    s.add_pod(alloc("p", "n1", [(dev("GPU-a", 1000, 10),)]))
    s.add_pod(alloc("p", "n2", [(dev("GPU-b", 1000, 10),)]))
    assert card_usage(s, "n1") == {"GPU-a": (0, 0, 0)}
    assert card_usage(s, "n2") == {"GPU-b": (1, 1000, 10)}
    assert s.pods_on("n1") == []


def test_same_card_twice_in_one_container_counts_two_slots() -> None:
    s = state_with(n1=("GPU-a",))
    s.add_pod(alloc("p", "n1", [(dev("GPU-a", 1000, 10),), (dev("GPU-a", 2000, 20),)]))
    assert card_usage(s, "n1") == {"GPU-a": (2, 3000, 30)}


# --- init containers ---------------------------------------------------------------------------------------


def test_init_usage_is_max_of_init_against_sum_of_app_and_released() -> None:
    s = state_with(n1=("GPU-a", "GPU-b"))
    a = alloc(
        "p",
        "n1",
        [
            (dev("GPU-a", 8000, 50),),  # init 1
            (dev("GPU-a", 6000, 70), dev("GPU-b", 100, 1)),  # init 2
            (dev("GPU-a", 3000, 10),),  # app 1
            (dev("GPU-a", 3000, 10),),  # app 2
            (),  # app 3: no GPU
        ],
        init_count=2,
    )
    s.add_pod(a)
    # GPU-a: init peak (1 slot, 8000, 70) vs app sum (2 slots, 6000, 20) -> field-wise max
    # GPU-b: init only (1, 100, 1)
    assert card_usage(s, "n1") == {"GPU-a": (2, 8000, 70), "GPU-b": (1, 100, 1)}
    assert s.release_init("p") is True
    assert card_usage(s, "n1") == {"GPU-a": (2, 6000, 20), "GPU-b": (0, 0, 0)}
    assert node_totals(s, "n1") == (2, 6000, 20)
    assert s.release_init("p") is False  # only once
    s.remove_pod("p")
    assert card_usage(s, "n1") == {"GPU-a": (0, 0, 0), "GPU-b": (0, 0, 0)}


def test_release_init_without_init_containers_or_pod_is_a_no_op() -> None:
    s = state_with(n1=("GPU-a",))
    s.add_pod(alloc("p", "n1", [(dev("GPU-a", 1000, 10),)]))
    assert s.release_init("p") is False
    assert s.release_init("missing") is False
    assert card_usage(s, "n1") == {"GPU-a": (1, 1000, 10)}


def test_init_container_decision_counts_the_peak() -> None:
    sched = scheduler(node("n1", [gpu("GPU-a")]))
    p = pod(
        "p",
        container("app1", gpu=1, mem=3000, cores=10),
        container("app2", gpu=1, mem=3000, cores=10),
        init=[container("init", gpu=1, mem=8000, cores=50)],
    )
    d = sched.decide(p)
    assert d.node == "n1", d.reason
    assert d.annotations[keys.VGPU_DEVICES_ALLOCATED] == (
        "GPU-a,NVIDIA,8000,50:;GPU-a,NVIDIA,3000,10:;GPU-a,NVIDIA,3000,10:;"
    )
    assert usage(sched.state, "n1") == {"GPU-a": (2, 8000, 50)}
    assert sched.state.release_init("uid-p")
    assert usage(sched.state, "n1") == {"GPU-a": (2, 6000, 20)}


def test_init_containers_fit_against_the_node_not_each_other() -> None:
    # two init containers of 10000 MiB each run one after another on a 16000 MiB card,
    # but two app containers of 10000 MiB cannot share it
    sched = scheduler(node("n1", [gpu("GPU-a")]))
    init = [container("i1", gpu=1, mem=10000), container("i2", gpu=1, mem=10000)]
    d = sched.decide(pod("ok", container("app", gpu=1, mem=10000), init=init))
    assert d.node == "n1", d.reason
    assert usage(sched.state, "n1") == {"GPU-a": (1, 10000, 0)}
    sched.state.remove_pod("uid-ok")
    d = sched.decide(pod("no", container("a1", gpu=1, mem=10000), container("a2", gpu=1, mem=10000)))
    assert d.node is None
    assert d.failed["n1"] == "1/1 CardInsufficientMemory"


# --- nodes ------------------------------------------------------------------------------------------------------


def test_node_reregistration_reapplies_its_pods() -> None:
    n1 = node("n1", [gpu("GPU-a"), gpu("GPU-b", index=1)])
    sched = scheduler(n1)
    sched.decide(gpu_pod("p", mem=1000, cores=10, annotations={keys.NVIDIA_USE_GPUUUID: "GPU-b"}))
    before = usage(sched.state, "n1")
    assert sched.observe_node(n1) is None  # same inventory again
    assert usage(sched.state, "n1") == before == {"GPU-a": (0, 0, 0), "GPU-b": (1, 1000, 10)}
    assert node_totals(sched.state, "n1") == (1, 1000, 10)
    # the card disappears from the registration: its usage goes with it, the pod stays
    assert sched.observe_node(node("n1", [gpu("GPU-a")])) is None
    assert usage(sched.state, "n1") == {"GPU-a": (0, 0, 0)}
    assert node_totals(sched.state, "n1") == (0, 0, 0)
    # ... and is counted again when the card is back
    assert sched.observe_node(n1) is None
    assert usage(sched.state, "n1") == before


def test_node_removed_and_back_keeps_its_pods() -> None:
    s = state_with(n1=("GPU-a",))
    s.add_pod(alloc("p", "n1", [(dev("GPU-a", 1000, 10),)]))
    s.remove_node("n1")
    assert "n1" not in s.nodes
    s.set_node("n1", cards("GPU-a"))
    assert card_usage(s, "n1") == {"GPU-a": (1, 1000, 10)}
    # removing the pod while its node is gone must not break the re-registration later
    s.remove_node("n1")
    s.remove_pod("p")
    s.set_node("n1", cards("GPU-a"))
    assert card_usage(s, "n1") == {"GPU-a": (0, 0, 0)}


def test_unknown_uuid_is_counted_once_the_card_appears() -> None:
    s = state_with(n1=("GPU-a",))
    s.add_pod(alloc("p", "n1", [(dev("GPU-a", 100, 1), dev("GPU-new", 2000, 20))]))
    assert card_usage(s, "n1") == {"GPU-a": (1, 100, 1)}
    s.set_node("n1", cards("GPU-a", "GPU-new"))
    assert card_usage(s, "n1") == {"GPU-a": (1, 100, 1), "GPU-new": (1, 2000, 20)}
    s.remove_pod("p")
    assert card_usage(s, "n1") == {"GPU-a": (0, 0, 0), "GPU-new": (0, 0, 0)}


def test_pod_on_unknown_node_is_counted_once_the_node_registers() -> None:
    s = ClusterState()
    s.add_pod(alloc("p", "n9", [(dev("GPU-a", 100, 1),)]))
    s.set_node("n9", cards("GPU-a"))
    assert card_usage(s, "n9") == {"GPU-a": (1, 100, 1)}


def test_running_pods_from_annotations_count_as_usage() -> None:
    n1 = node("n1", [gpu("GPU-a")])
    first = scheduler(n1)
    p = gpu_pod("p", mem=1000, cores=10)
    bound = with_annotations(p, first.decide(p).annotations, "n1")
    sched = scheduler(n1)
    a = sched.allocation_of(bound, "n1")
    assert a is not None
    sched.state.add_pod(a)
    assert usage(sched.state, "n1") == {"GPU-a": (1, 1000, 10)}
    assert sched.allocation_of(gpu_pod("other"), "n1") is None


# --- property: incremental == from scratch -------------------------------------------------------------------

UUIDS = ("GPU-a", "GPU-b", "GPU-c", "GPU-x")
INVENTORIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "n1": (("GPU-a", "GPU-b"), ("GPU-a", "GPU-b", "GPU-x"), ("GPU-a",)),
    "n2": (("GPU-c",), ("GPU-c", "GPU-x")),
}

_placement = st.builds(
    dev,
    st.sampled_from(UUIDS),
    st.integers(0, 5000),
    st.integers(0, 100),
    st.one_of(st.none(), st.tuples(st.integers(0, 7), st.integers(1, 2))),
)
_containers = st.lists(st.lists(_placement, max_size=3).map(tuple), min_size=1, max_size=4)


@st.composite
def _alloc(draw: Any) -> PodAllocation:
    containers = draw(_containers)
    return alloc(
        draw(st.sampled_from(["p1", "p2", "p3", "p4"])),
        draw(st.sampled_from(["n1", "n2", "n3"])),
        containers,
        init_count=draw(st.integers(0, len(containers))),
    )


_op = st.one_of(
    st.tuples(st.just("add"), _alloc()),
    st.tuples(st.just("remove"), st.sampled_from(["p1", "p2", "p3", "p4"])),
    st.tuples(st.just("release"), st.sampled_from(["p1", "p2", "p3", "p4"])),
    st.tuples(st.just("register"), st.sampled_from(["n1", "n2"]), st.integers(0, 2)),
    st.tuples(st.just("drop"), st.sampled_from(["n1", "n2"])),
)

Snapshot = dict[str, dict[str, tuple[int, int, int, tuple[tuple[int, int], ...]]]]


def snapshot(s: ClusterState) -> Snapshot:
    return {
        name: {c.uuid: (c.used, c.usedmem, c.usedcores, tuple(sorted(c.mig_in_use))) for c in n.cards}
        for name, n in sorted(s.nodes.items())
    }


def reference(inventory: dict[str, tuple[str, ...]], pods: dict[str, PodAllocation]) -> Snapshot:
    """HAMi's collapsed usage computed from scratch, independently of the ledger."""
    out: Snapshot = {}
    for name, uuids in sorted(inventory.items()):
        per: dict[str, list[Any]] = {u: [0, 0, 0, []] for u in uuids}
        for a in pods.values():
            if a.node != name:
                continue
            for u in uuids:
                held = [
                    (ci < a.init_count, p)
                    for ci, c in enumerate(a.containers[keys.VENDOR_NVIDIA])
                    for p in c
                    if p.device.uuid == u
                ]
                init = [p.device for is_init, p in held if is_init and not a.init_released]
                app = [p.device for is_init, p in held if not is_init]
                acc = per[u]
                acc[0] += max(1 if init else 0, len(app))
                acc[1] += max(max((d.usedmem for d in init), default=0), sum(d.usedmem for d in app))
                acc[2] += max(max((d.usedcores for d in init), default=0), sum(d.usedcores for d in app))
                # MIG instances live as long as the pod, init containers' included
                acc[3].extend((p.mig.placement_start, p.mig.placement_size) for _, p in held if p.mig)
        out[name] = {u: (v[0], v[1], v[2], tuple(sorted(v[3]))) for u, v in per.items()}
    return out


def check(s: ClusterState, inventory: dict[str, tuple[str, ...]], pods: dict[str, PodAllocation]) -> None:
    assert snapshot(s) == reference(inventory, pods)
    for name, n in s.nodes.items():
        assert node_totals(s, name) == (
            sum(c.used for c in n.cards),
            sum(c.usedmem for c in n.cards),
            sum(c.usedcores for c in n.cards),
        )


@settings(max_examples=150, deadline=None)
@given(st.lists(_op, max_size=25))
def test_ledger_matches_a_from_scratch_recomputation(ops: list[tuple[Any, ...]]) -> None:
    s = ClusterState()
    inventory: dict[str, tuple[str, ...]] = {}
    pods: dict[str, PodAllocation] = {}
    for name in INVENTORIES:
        inventory[name] = INVENTORIES[name][0]
        s.set_node(name, cards(*inventory[name]))
    for op in ops:
        kind = op[0]
        if kind == "add":
            a: PodAllocation = op[1]
            # a fresh object each time: the ledger must not depend on identity
            a = PodAllocation(
                uid=a.uid,
                namespace=a.namespace,
                name=a.name,
                node=a.node,
                containers=a.containers,
                init_count=a.init_count,
            )
            s.add_pod(a)
            pods[a.uid] = a
        elif kind == "remove":
            got = s.remove_pod(op[1])
            assert (got is None) == (op[1] not in pods)
            pods.pop(op[1], None)
        elif kind == "release":
            s.release_init(op[1])
        elif kind == "register":
            inventory[op[1]] = INVENTORIES[op[1]][op[2] % len(INVENTORIES[op[1]])]
            s.set_node(op[1], cards(*inventory[op[1]]))
        else:
            s.remove_node(op[1])
            inventory.pop(op[1], None)
        check(s, inventory, pods)
    # a from-scratch state fed the same pods agrees too
    fresh = ClusterState()
    for name, uuids in inventory.items():
        fresh.set_node(name, cards(*uuids))
    for a in pods.values():
        fresh.add_pod(a)
    assert snapshot(fresh) == snapshot(s)
    # and removing everything returns every card to zero
    for uid in list(pods):
        s.remove_pod(uid)
    for name in INVENTORIES:
        if name not in s.nodes:
            s.set_node(name, cards(*INVENTORIES[name][1]))
    assert all(v == (0, 0, 0, ()) for per in snapshot(s).values() for v in per.values())
    assert all(node_totals(s, n) == (0, 0, 0) for n in s.nodes)
    assert s.pods == {}
