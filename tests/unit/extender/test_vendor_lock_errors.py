"""The bind path's per-vendor locks when something fails (the API side:
tests/integration/test_vendor_locks.py): every lock taken is released, last first, and a lock that
names no owner (Cambricon's) is never removed by a bind that cannot know it wrote it."""

from __future__ import annotations

from typing import Any

from hami.config import parse_device_config
from hami.devices.cambricon import DSMLU_LOCK
from hami.devices.registry import default_registry
from hami.extender.service import BindRefused, ExtenderService
from hami.extender.sync import LedgerSync
from hami.extender.wire import BindingArgs
from hami.protocol.node import DeviceInfo, encode_node_devices_legacy
from hami.protocol.nodelock import HAMI_NODE_LOCK, NodeLockCodec
from hami.scheduling.decide import Scheduler


class _Locker:
    """A node lock recording acquires and releases in one shared journal."""

    def __init__(self, codec: NodeLockCodec, journal: list[str], *, broken: bool = False) -> None:
        self.codec = codec
        self.journal = journal
        self.broken = broken

    async def acquire(self, node: str, namespace: str, name: str) -> float:
        if self.broken:
            raise OSError("socket closed after the patch was sent")
        self.journal.append(f"acquire {self.codec.key}")
        return 0.0

    async def release(self, node: str, namespace: str, name: str) -> bool:
        self.journal.append(f"release {self.codec.key}")
        return True


class _Client:
    def __init__(self, pod: dict[str, Any], *, bind_fails: bool) -> None:
        self.pod = pod
        self.bind_fails = bind_fails

    async def get(self, path: str) -> dict[str, Any]:
        return self.pod

    async def merge_patch(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}

    async def bind_pod(self, *args: Any, **kwargs: Any) -> None:
        if self.bind_fails:
            raise RuntimeError("connection reset by a proxy")

    async def create_event(self, *args: Any, **kwargs: Any) -> None:
        return None


NODE = {
    "metadata": {
        "name": "n",
        "annotations": {
            "hami.io/node-dcu-register": encode_node_devices_legacy(
                [DeviceInfo(id="DCU-0", count=4, devmem=16384, devcore=100, type="DCU-Z100", health=True)]
            )
        },
    },
    "status": {
        "capacity": {"cambricon.com/mlu.smlu.vcore": "100", "cambricon.com/mlu.smlu.vmemory": "128"},
        "allocatable": {"cambricon.com/mlu.smlu.vcore": "100", "cambricon.com/mlu.smlu.vmemory": "128"},
    },
}
POD = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "uid-p", "annotations": {}},
    "spec": {
        "schedulerName": "hami-scheduler",
        "containers": [
            {"name": "mlu", "resources": {"limits": {"cambricon.com/vmlu": 1}}},
            {"name": "dcu", "resources": {"limits": {"hygon.com/dcunum": 1}}},
        ],
    },
}


def _service(journal: list[str], *, bind_fails: bool = False, broken: str = "") -> ExtenderService:
    cfg, _ = parse_device_config("cambricon: {}\nhygon: {}\n")
    sched = Scheduler(default_registry(cfg))
    sync = LedgerSync(sched, scheduler_name="hami-scheduler")
    sync.node_changed(NODE)
    mutex = _Locker(HAMI_NODE_LOCK, journal, broken=broken == HAMI_NODE_LOCK.key)
    dsmlu = _Locker(DSMLU_LOCK, journal, broken=broken == DSMLU_LOCK.key)
    return ExtenderService(
        scheduler=sched,
        sync=sync,
        client=_Client(POD, bind_fails=bind_fails),  # type: ignore[arg-type]
        locker=mutex,  # type: ignore[arg-type]
        lockers=[dsmlu],  # type: ignore[list-item]
        pod_lookup=lambda ns, n: POD,
        annotate_at_filter=False,
    )


async def test_a_failed_binding_releases_both_locks_last_first() -> None:
    journal: list[str] = []
    result = await _service(journal, bind_fails=True).bind_pod(BindingArgs("p", "ns", "uid-p", "n"))
    assert isinstance(result, BindRefused)
    assert journal == [
        "acquire cambricon.com/dsmlu.lock",
        "acquire hami.io/mutex.lock",
        "release hami.io/mutex.lock",
        "release cambricon.com/dsmlu.lock",
    ]


async def test_an_ownerless_lock_whose_acquire_broke_is_left_to_expire() -> None:
    journal: list[str] = []
    svc = _service(journal, broken=DSMLU_LOCK.key)
    result = await svc.bind_pod(BindingArgs("p", "ns", "uid-p", "n"))
    assert isinstance(result, BindRefused) and "OSError" in result.reason
    assert journal == []  # it may be another bind's: not removed
    assert "uid-p" not in svc.scheduler.state.pods  # no reservation left either


async def test_an_owned_lock_whose_acquire_broke_is_released_with_the_ones_before() -> None:
    journal: list[str] = []
    svc = _service(journal, broken=HAMI_NODE_LOCK.key)
    result = await svc.bind_pod(BindingArgs("p", "ns", "uid-p", "n"))
    assert isinstance(result, BindRefused)
    assert journal == [
        "acquire cambricon.com/dsmlu.lock",
        "release hami.io/mutex.lock",  # only this pod's is removed by the release itself
        "release cambricon.com/dsmlu.lock",
    ]
