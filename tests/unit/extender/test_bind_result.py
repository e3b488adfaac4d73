"""``ExtenderService.bind_pod`` answers with a typed result; ``bind`` is its wire form ("" or the error)."""

from __future__ import annotations

from typing import Any

from hami.devices.registry import default_registry
from hami.extender.service import BindRefused, Bound, ExtenderService
from hami.extender.sync import LedgerSync
from hami.extender.wire import BindingArgs
from hami.protocol import keys
from hami.protocol.node import DeviceInfo, encode_node_devices
from hami.scheduling.decide import Scheduler


def _service(pods: dict[str, dict[str, Any]]) -> ExtenderService:
    sched = Scheduler(default_registry())
    dev = DeviceInfo(id="GPU-a", count=10, devmem=16000, devcore=100, type="NVIDIA-T4", health=True)
    sched.observe_node(
        {"metadata": {"name": "a", "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices([dev])}}}
    )
    return ExtenderService(
        scheduler=sched,
        sync=LedgerSync(sched, scheduler_name="hami-scheduler"),
        client=None,
        locker=None,  # type: ignore[arg-type]
        pod_lookup=lambda ns, n: pods.get(n),
        annotate_at_filter=False,
    )


def _bound_pod(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
        "spec": {"schedulerName": "hami-scheduler", "nodeName": node, "containers": [{"name": "c"}]},
    }


async def test_an_already_bound_pod_is_bound_to_its_node_and_refused_elsewhere() -> None:
    svc = _service({"p": _bound_pod("p", "a")})
    assert await svc.bind_pod(BindingArgs("p", "ns", "uid-p", "a")) == Bound("a")
    refused = await svc.bind_pod(BindingArgs("p", "ns", "uid-p", "b"))
    assert refused == BindRefused("pod ns/p is already bound to node a")
    assert await svc.bind(BindingArgs("p", "ns", "uid-p", "a")) == ""
    assert await svc.bind(BindingArgs("p", "ns", "uid-p", "b")) == refused.reason


async def test_a_deleted_pod_is_refused_and_forgotten() -> None:
    svc = _service({})
    svc.sync.pod_deleted({"metadata": {"name": "gone", "namespace": "ns", "uid": "uid-gone"}})
    svc.reservations.assume("uid-gone")
    result = await svc.bind_pod(BindingArgs("gone", "ns", "uid-gone", "a"))
    assert isinstance(result, BindRefused) and "was deleted" in result.reason
    assert not svc.reservations.is_assumed("uid-gone")
