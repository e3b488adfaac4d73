"""The preempt verb's service side: victim priorities come from the Pods sent, else the informer's copy."""

from __future__ import annotations

from typing import Any

from hami.devices.registry import default_registry
from hami.extender.service import ExtenderService, NotLeader
from hami.extender.sync import LedgerSync
from hami.extender.wire import PreemptionArgs, preemption_result
from hami.protocol import keys
from hami.protocol.node import DeviceInfo, encode_node_devices
from hami.scheduling.decide import Scheduler


def _node() -> dict[str, Any]:
    card = DeviceInfo(id="GPU-0", index=0, count=10, devmem=16000, devcore=100, type="NVIDIA-A100", numa=0)
    return {
        "metadata": {"name": "n1", "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices([card])}}
    }


def _pod(name: str, mem: int, priority: int = 0) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": 1, "nvidia.com/gpumem": mem}
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "annotations": {}},
        "spec": {"priority": priority, "containers": [{"name": "c", "resources": {"limits": limits}}]},
    }


def _service(pods: dict[str, dict[str, Any]], leader: bool = True) -> ExtenderService:
    sched = Scheduler(default_registry())
    sched.observe_node(_node())
    for p in pods.values():
        assert sched.decide(p).node == "n1"
    return ExtenderService(
        scheduler=sched,
        sync=LedgerSync(sched),
        client=None,  # type: ignore[arg-type]
        locker=None,  # type: ignore[arg-type]
        pod_lookup=lambda ns, name: pods.get(name),
        is_leader=lambda: leader,
    )


async def test_meta_victims_take_their_priority_from_the_informer() -> None:
    pods = {"lo": _pod("lo", 6000, priority=10), "hi": _pod("hi", 6000, priority=100)}
    svc = _service(pods)
    body = {
        "Pod": _pod("p", 8000, priority=1000),
        "NodeNameToMetaVictims": {
            "n1": {"Pods": [{"UID": "uid-hi"}, {"UID": "uid-lo"}], "NumPDBViolations": 2}
        },
    }
    args = PreemptionArgs.parse(body)
    answer = await svc.preempt(args)
    assert answer == {"n1": ["uid-lo"]}
    assert preemption_result(answer, args.pdb_violations) == {
        "NodeNameToMetaVictims": {"n1": {"Pods": [{"UID": "uid-lo"}], "NumPDBViolations": 2}}
    }
    # the informer's priorities swapped: the other one goes
    pods["lo"]["spec"]["priority"], pods["hi"]["spec"]["priority"] = 100, 10
    assert await svc.preempt(args) == {"n1": ["uid-hi"]}


async def test_a_follower_refuses() -> None:
    svc = _service({}, leader=False)
    args = PreemptionArgs.parse({"Pod": _pod("p", 8000), "NodeNameToMetaVictims": {}})
    try:
        await svc.preempt(args)
    except NotLeader:
        return
    raise AssertionError("a follower answered")
