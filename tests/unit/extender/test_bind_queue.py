"""``--bind-queue-limit``: the service counts pods decided on a node until their allocation finishes."""

from __future__ import annotations

from typing import Any

from hami.devices.registry import default_registry
from hami.extender.service import ExtenderService
from hami.extender.sync import LedgerSync
from hami.extender.wire import ExtenderArgs
from hami.protocol import keys
from hami.protocol.node import DeviceInfo, encode_node_devices
from hami.scheduling.decide import Scheduler


def _node(name: str) -> dict[str, Any]:
    devs = [DeviceInfo(id=f"GPU-{name}", count=10, devmem=16000, devcore=100, type="NVIDIA-T4", health=True)]
    return {"metadata": {"name": name, "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devs)}}}


def _pod(name: str, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "annotations": annotations},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "resources": {
                        "limits": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 1000, "nvidia.com/gpucores": 10}
                    },
                }
            ]
        },
    }


def _service(limit: int) -> tuple[ExtenderService, LedgerSync]:
    sched = Scheduler(default_registry(), node_policy="binpack")
    for n in ("a", "b"):
        sched.observe_node(_node(n))
    sync = LedgerSync(sched)
    # filter with annotate_at_filter=False never touches the API client or the lock
    svc = ExtenderService(
        scheduler=sched,
        sync=sync,
        client=None,
        locker=None,  # type: ignore[arg-type]
        pod_lookup=lambda ns, n: None,
        annotate_at_filter=False,
        bind_queue_limit=limit,
    )
    return svc, sync


async def test_a_node_with_a_pending_allocation_is_tried_last() -> None:
    svc, sync = _service(limit=1)
    first = await svc.filter(ExtenderArgs(pod=_pod("p1"), node_names=["a", "b"]))
    assert first.node_names == ["a"]
    assert svc.congested_nodes() == {"a"}
    second = await svc.filter(ExtenderArgs(pod=_pod("p2"), node_names=["a", "b"]))
    assert second.node_names == ["b"]  # binpack would pick a again; a is busy allocating p1
    # p1's allocation finished on the node: a is free again and binpack goes back to it
    sync.pod_changed(_pod("p1", **{keys.BIND_PHASE: keys.BIND_PHASE_SUCCESS}))
    assert svc.congested_nodes() == {"b"}
    third = await svc.filter(ExtenderArgs(pod=_pod("p3"), node_names=["a", "b"]))
    assert third.node_names == ["a"]


async def test_forgotten_pods_do_not_keep_a_node_congested() -> None:
    svc, sync = _service(limit=1)
    await svc.filter(ExtenderArgs(pod=_pod("p1"), node_names=["a", "b"]))
    sync.forget("uid-p1")  # deleted, or its bind failed
    assert svc.congested_nodes() == frozenset()


async def test_limit_zero_is_plain_binpack() -> None:
    svc, _ = _service(limit=0)
    for name in ("p1", "p2", "p3"):
        out = await svc.filter(ExtenderArgs(pod=_pod(name), node_names=["a", "b"]))
        assert out.node_names == ["a"]
    assert svc.congested_nodes() == frozenset()
