"""The extender trusts only its own decisions and forgets what it must: forged allocations, the node-lock
scope of init-only pods, stale MIG keys, already-bound pods, reservation TTL, deleted pods, tombstones."""

from __future__ import annotations

from typing import Any

from hami.devices.registry import default_registry
from hami.extender.service import ExtenderService
from hami.extender.sync import LedgerSync
from hami.extender.wire import BindingArgs, ExtenderArgs
from hami.protocol import keys
from hami.protocol.node import DeviceInfo, MigPlacement, MigProfile, encode_node_devices
from hami.scheduling.decide import Scheduler


def _node(name: str, *, mig: bool = False) -> dict[str, Any]:
    profiles = (MigProfile("1g.5gb", 5000, 14, 1, (MigPlacement(0, 1),)),) if mig else ()
    dev = DeviceInfo(
        id=f"GPU-{name}",
        count=7 if mig else 10,
        devmem=16000,
        devcore=100,
        type="NVIDIA-A100",
        health=True,
        mode="mig" if mig else "hami-core",
        mig_profiles=profiles,
    )
    return {
        "metadata": {"name": name, "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices([dev])}}
    }


def _pod(
    name: str,
    *,
    node: str | None = None,
    scheduler: str = "hami-scheduler",
    init_only: bool = False,
    **annotations: str,
) -> dict[str, Any]:
    container = {"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 1000}}}
    spec: dict[str, Any] = {"schedulerName": scheduler}
    if init_only:
        spec["initContainers"] = [container]
        spec["containers"] = [{"name": "app"}]
    else:
        spec["containers"] = [container]
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "annotations": annotations},
        "spec": spec,
    }


def _service(*nodes: dict[str, Any], lookup: dict[str, dict[str, Any]] | None = None) -> ExtenderService:
    sched = Scheduler(default_registry())
    for n in nodes:
        assert sched.observe_node(n) is None
    sync = LedgerSync(sched, scheduler_name="hami-scheduler")
    pods = lookup or {}
    return ExtenderService(
        scheduler=sched,
        sync=sync,
        client=None,
        locker=None,  # type: ignore[arg-type]
        pod_lookup=lambda ns, n: pods.get(n),
        annotate_at_filter=False,
    )


def test_forged_allocation_on_a_pod_hami_did_not_schedule_counts_nothing() -> None:
    svc = _service(_node("a"))
    forged = _pod(
        "sleep",
        node="a",
        scheduler="default-scheduler",
        **{keys.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,16000,100:;"},
    )
    svc.sync.pod_changed(forged)
    assert svc.scheduler.state.nodes["a"].usedmem == 0
    genuine = _pod("real", node="a", **{keys.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,1000,0:;"})
    svc.sync.pod_changed(genuine)
    assert svc.scheduler.state.nodes["a"].usedmem == 1000


def test_a_pod_with_cards_only_in_init_containers_takes_the_node_lock() -> None:
    svc = _service(_node("a"))
    d = svc.scheduler.decide(_pod("init-only", init_only=True))
    assert d.node == "a"
    alloc = svc.scheduler.state.pods["uid-init-only"]
    assert svc._lockers_for(alloc.containers) == [svc.locker]


def test_redeciding_away_from_mig_removes_the_stale_mig_annotation() -> None:
    svc = _service(_node("m", mig=True), _node("s"))
    mig = svc.scheduler.decide(_pod("p", **{keys.NVIDIA_VGPU_MODE: "mig"}), candidates=["m"])
    assert keys.VGPU_MIG_ALLOCATIONS in svc.decision_patch(mig)["metadata"]["annotations"]
    plain = svc.scheduler.decide(_pod("p"), candidates=["s"])
    patch = svc.decision_patch(plain)["metadata"]["annotations"]
    assert patch[keys.VGPU_MIG_ALLOCATIONS] is None  # merge patch null: removed from the pod
    assert patch[keys.VGPU_DEVICES_ALLOCATED] == "GPU-s,NVIDIA,1000,0:;"


async def test_filter_refuses_a_pod_the_informer_already_sees_bound() -> None:
    bound = _pod("late", node="a", **{keys.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,1000,0:;"})
    svc = _service(_node("a"), _node("b"), lookup={"late": bound})
    svc.sync.pod_changed(bound)
    stale_copy = _pod("late")  # what a kube-scheduler that timed out on the bind still holds
    out = await svc.filter(ExtenderArgs(pod=stale_copy, node_names=["a", "b"]))
    assert out.node_names == [] and "already bound to node a" in out.error
    assert svc.scheduler.state.pods["uid-late"].node == "a"  # the running pod's usage is untouched
    assert svc.scheduler.state.nodes["a"].usedmem == 1000


async def test_bind_of_an_already_bound_pod_is_idempotent_and_never_forgets_it() -> None:
    bound = _pod("late", node="a", **{keys.VGPU_DEVICES_ALLOCATED: "GPU-a,NVIDIA,1000,0:;"})
    svc = _service(_node("a"), _node("b"), lookup={"late": bound})
    svc.sync.pod_changed(bound)
    assert await svc.bind(BindingArgs("late", "ns", "uid-late", "a")) == ""
    assert "already bound to node a" in await svc.bind(BindingArgs("late", "ns", "uid-late", "b"))
    assert svc.scheduler.state.nodes["a"].usedmem == 1000


async def test_a_decision_never_bound_is_dropped_after_the_reservation_ttl() -> None:
    now = [1000.0]
    sched = Scheduler(default_registry())
    sched.observe_node(_node("a"))
    sync = LedgerSync(sched, scheduler_name="hami-scheduler")
    svc = ExtenderService(
        scheduler=sched,
        sync=sync,
        client=None,
        locker=None,  # type: ignore[arg-type]
        pod_lookup=lambda ns, n: None,
        annotate_at_filter=False,
        reservation_ttl=300,
        clock=lambda: now[0],
    )
    await svc.filter(ExtenderArgs(pod=_pod("abandoned"), node_names=["a"]))
    assert "uid-abandoned" in sched.state.pods
    now[0] += 200
    await svc.filter(ExtenderArgs(pod=_pod("other"), node_names=["a"]))
    assert "uid-abandoned" in sched.state.pods  # still within the TTL
    now[0] += 150
    await svc.filter(ExtenderArgs(pod=_pod("third"), node_names=["a"]))
    assert "uid-abandoned" not in sched.state.pods and "uid-abandoned" not in sync.assumed
    assert "uid-other" in sched.state.pods  # 150 s old: kept


async def test_a_pod_deleted_before_kube_scheduler_asks_reserves_nothing() -> None:
    """kube-scheduler still had the pod queued when its delete event reached hami: filtering it
    then must not hold a card for nobody until the reservation TTL, and a bind is refused."""
    svc = _service(_node("a"))
    gone = _pod("gone")
    svc.sync.pod_deleted(gone)
    out = await svc.filter(ExtenderArgs(pod=gone, node_names=["a"]))
    assert out.node_names == [] and "was deleted" in out.error
    assert "uid-gone" not in svc.scheduler.state.pods and "uid-gone" not in svc.sync.assumed
    assert svc.scheduler.state.nodes["a"].usedmem == 0
    assert "was deleted" in await svc.bind(BindingArgs("gone", "ns", "uid-gone", "a"))
    # a pod of the same name but a new uid (recreated) is decided normally
    again = _pod("gone")
    again["metadata"]["uid"] = "uid-gone-2"
    assert (await svc.filter(ExtenderArgs(pod=again, node_names=["a"]))).node_names == ["a"]


def test_tombstones_are_bounded() -> None:
    from hami.extender.sync import MAX_TOMBSTONES

    svc = _service(_node("a"))
    for i in range(MAX_TOMBSTONES + 10):
        svc.sync.pod_deleted({"metadata": {"uid": f"u{i}", "name": f"p{i}", "namespace": "ns"}})
    assert not svc.sync.was_deleted("u0") and svc.sync.was_deleted(f"u{MAX_TOMBSTONES + 9}")
