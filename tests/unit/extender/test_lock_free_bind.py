"""Binding on nodes whose device plugin runs lock-free (``hami.io/allocation-mode=cdi``).

On such a node the extender makes one API write per pod (the Binding, carrying the finished
allocation) and never touches the node lock; every other node keeps HAMi's lock protocol, and the
mode is read again at bind, so a node that changes mode between filter and bind is handled right.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hami.devices.registry import default_registry
from hami.extender.service import BindRefused, Bound, ExtenderService
from hami.extender.sync import LedgerSync
from hami.extender.wire import BindingArgs, ExtenderArgs
from hami.kube.errors import ConflictError
from hami.protocol import keys
from hami.protocol.allocmode import allocation_mode, is_lock_free
from hami.protocol.node import DeviceInfo, encode_node_devices
from hami.protocol.pod import decode_pod_devices
from hami.scheduling.decide import Scheduler


def _node(name: str, mode: str | None) -> dict[str, Any]:
    dev = DeviceInfo(id=f"GPU-{name}", count=10, devmem=16000, devcore=100, type="NVIDIA-T4", health=True)
    annotations = {keys.NODE_NVIDIA_REGISTER: encode_node_devices([dev])}
    if mode is not None:
        annotations[keys.NODE_ALLOCATION_MODE] = mode
    return {"metadata": {"name": name, "annotations": annotations}}


def _pod(name: str, *, init: bool = False) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 1000, "nvidia.com/gpucores": 10}
    spec: dict[str, Any] = {
        "schedulerName": "hami-scheduler",
        "containers": [{"name": "c", "resources": {"limits": limits}}],
    }
    if init:
        spec["initContainers"] = [{"name": "setup"}]
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"}, "spec": spec}


class _Locker:
    """Records every lock call; a test fails if a lock-free bind makes one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def acquire(self, node: str, namespace: str, name: str) -> float:
        self.calls.append(("acquire", node, name))
        return 0.0

    async def release(self, node: str, namespace: str, name: str) -> bool:
        self.calls.append(("release", node, name))
        return True


class _Client:
    """Records every mutating request; ``bind_error`` makes the Binding fail."""

    def __init__(self, pods: dict[str, dict[str, Any]]) -> None:
        self.pods = pods
        self.writes: list[tuple[str, Any]] = []
        self.bind_error: Exception | None = None

    async def merge_patch(self, path: str, patch: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.writes.append(("patch", path))
        return {}

    async def get(self, path: str) -> dict[str, Any]:
        return self.pods[path.rsplit("/", 1)[-1]]

    async def bind_pod(
        self, namespace: str, name: str, *, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        self.writes.append(("bind", (name, node, annotations)))
        if self.bind_error is not None:
            raise self.bind_error

    async def create_event(self, *args: Any, **kwargs: Any) -> None:
        self.writes.append(("event", kwargs.get("reason")))


class _Cluster:
    """The service over two one-card nodes, ``cdi`` (lock-free) and ``lck`` (no mode annotation)."""

    def __init__(self, *, annotate_at_filter: bool = True) -> None:
        self.nodes = {"cdi": _node("cdi", keys.ALLOCATION_MODE_CDI), "lck": _node("lck", None)}
        self.pods: dict[str, dict[str, Any]] = {}
        self.client = _Client(self.pods)
        self.locker = _Locker()
        sched = Scheduler(default_registry())
        self.sync = LedgerSync(sched, scheduler_name="hami-scheduler")
        for n in self.nodes.values():
            self.sync.node_changed(n)
        self.svc = ExtenderService(
            scheduler=sched,
            sync=self.sync,
            client=self.client,  # type: ignore[arg-type]
            locker=self.locker,  # type: ignore[arg-type]
            pod_lookup=lambda ns, n: self.pods.get(n),
            node_lookup=self.nodes.get,
            annotate_at_filter=annotate_at_filter,
        )

    async def schedule(self, pod: dict[str, Any], node: str) -> tuple[BindRefused | Bound, dict[str, str]]:
        """Filter on ``node`` alone, then bind; returns the result and the Binding's annotations."""
        self.pods[pod["metadata"]["name"]] = pod
        out = await self.svc.filter(ExtenderArgs(pod=pod, node_names=[node]))
        assert out.node_names == [node]
        await asyncio.sleep(0)  # let the background decision write (if any) run
        args = BindingArgs(pod["metadata"]["name"], "ns", pod["metadata"]["uid"], node)
        result = await self.svc.bind_pod(args)
        binds = [w[1] for w in self.client.writes if w[0] == "bind"]
        return result, binds[-1][2] if binds else {}


@pytest.mark.parametrize(
    ("annotation", "mode"),
    [("cdi", "cdi"), ("lock", "lock"), ("CDI", "lock"), ("", "lock"), (None, "lock"), ("cdi ", "lock")],
)
def test_only_the_exact_cdi_value_is_lock_free(annotation: str | None, mode: str) -> None:
    node = _node("n", annotation)
    assert allocation_mode(node) == mode
    assert is_lock_free(node) == (mode == "cdi")


def test_a_node_not_in_the_cache_uses_the_lock() -> None:
    assert allocation_mode(None) == keys.ALLOCATION_MODE_LOCK


async def test_a_cdi_node_binds_with_one_write_and_no_lock() -> None:
    c = _Cluster(annotate_at_filter=True)  # HAMi's filter-time write is skipped for cdi nodes
    result, ann = await c.schedule(_pod("p"), "cdi")
    assert result == Bound("cdi")
    assert [w[0] for w in c.client.writes] == ["bind"]
    assert c.locker.calls == []
    assert ann[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
    assert ann[keys.VGPU_DEVICES_TO_ALLOCATE] == ";"  # the plugin commit's encoding: one empty container
    (devices,) = decode_pod_devices(ann[keys.VGPU_DEVICES_ALLOCATED])
    assert devices[0].uuid == "GPU-cdi" and devices[0].usedmem == 1000 and devices[0].usedcores == 10
    assert ann[keys.VGPU_NODE] == "cdi" and int(ann[keys.BIND_TIME]) > 0


async def test_init_containers_get_an_empty_entry_each() -> None:
    c = _Cluster()
    _, ann = await c.schedule(_pod("p", init=True), "cdi")
    assert ann[keys.VGPU_DEVICES_TO_ALLOCATE] == ";;"
    assert [len(x) for x in decode_pod_devices(ann[keys.VGPU_DEVICES_ALLOCATED])] == [0, 1]


async def test_a_lock_node_keeps_hami_protocol() -> None:
    c = _Cluster(annotate_at_filter=True)
    result, ann = await c.schedule(_pod("p"), "lck")
    assert result == Bound("lck")
    assert [w[0] for w in c.client.writes] == ["patch", "bind"]
    assert c.locker.calls == [("acquire", "lck", "p")]  # the device plugin releases it
    assert ann[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
    assert ann[keys.VGPU_DEVICES_TO_ALLOCATE] == ann[keys.VGPU_DEVICES_ALLOCATED]


async def test_the_mode_is_read_again_at_bind() -> None:
    c = _Cluster()
    pod = _pod("p")
    c.pods["p"] = pod
    await c.svc.filter(ExtenderArgs(pod=pod, node_names=["cdi"]))
    await asyncio.sleep(0)
    assert c.client.writes == []  # decided for a lock-free node: nothing written at filter
    del c.nodes["cdi"]["metadata"]["annotations"][keys.NODE_ALLOCATION_MODE]  # plugin back to the lock
    assert await c.svc.bind_pod(BindingArgs("p", "ns", "uid-p", "cdi")) == Bound("cdi")
    assert c.locker.calls == [("acquire", "cdi", "p")]
    (_, (_, _, ann)) = c.client.writes[-1]
    assert ann[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
    assert ann[keys.VGPU_DEVICES_TO_ALLOCATE] == ann[keys.VGPU_DEVICES_ALLOCATED]  # the plugin's to consume


async def test_a_node_turning_cdi_after_filter_binds_lock_free() -> None:
    c = _Cluster()
    pod = _pod("p")
    c.pods["p"] = pod
    await c.svc.filter(ExtenderArgs(pod=pod, node_names=["lck"]))
    c.nodes["lck"]["metadata"]["annotations"][keys.NODE_ALLOCATION_MODE] = keys.ALLOCATION_MODE_CDI
    assert await c.svc.bind_pod(BindingArgs("p", "ns", "uid-p", "lck")) == Bound("lck")
    assert c.locker.calls == []
    assert c.client.writes[-1][1][2][keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS


async def test_a_failed_lock_free_bind_releases_nothing_and_forgets_the_reservation() -> None:
    c = _Cluster()
    c.client.bind_error = ConflictError(409, "Conflict", "pod is being deleted")
    c.pods["p"] = _pod("p")
    result, _ = await c.schedule(c.pods["p"], "cdi")
    assert isinstance(result, BindRefused) and "refused" in result.reason
    assert c.locker.calls == []
    assert "uid-p" not in c.svc.scheduler.state.pods and not c.svc.reservations.is_assumed("uid-p")


async def test_a_restarted_extender_binds_lock_free_without_a_decision_write() -> None:
    c = _Cluster()
    c.pods["p"] = _pod("p")  # bind without a filter in this process (e.g. after a restart)
    assert await c.svc.bind_pod(BindingArgs("p", "ns", "uid-p", "cdi")) == Bound("cdi")
    assert [w[0] for w in c.client.writes] == ["bind"] and c.locker.calls == []


async def test_the_bound_copy_ends_the_pods_place_in_flight_at_once() -> None:
    c = _Cluster()
    c.svc.bind_queue_limit = 1
    result, ann = await c.schedule(_pod("p"), "cdi")
    assert result == Bound("cdi") and c.svc.congested_nodes() == {"cdi"}
    bound = {**_pod("p"), "metadata": {**_pod("p")["metadata"], "annotations": ann}}
    bound["spec"]["nodeName"] = "cdi"
    c.sync.pod_changed(bound)  # the watch event of the Binding: no plugin write comes after it
    assert c.svc.congested_nodes() == frozenset()
    assert not c.svc.reservations.is_assumed("uid-p")
    assert c.svc.scheduler.state.pods["uid-p"].node == "cdi"
