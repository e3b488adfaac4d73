"""LedgerSync: which watch events change the usage ledger (and which must not).

Every pod here goes through the real codecs: a decision made by the core, its annotations put on the
pod the way the API server would hold them, then the event fed to :class:`LedgerSync`.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hami.devices.registry import default_registry
from hami.extender.sync import LedgerSync, init_containers_done
from hami.protocol import keys
from hami.protocol.node import DeviceInfo, encode_node_devices
from hami.scheduling.decide import Scheduler

CARD_MEM = 16000


def gpu_node(name: str, cards: int = 2, *, extra: dict[str, str] | None = None) -> dict[str, Any]:
    devices = [
        DeviceInfo(
            id=f"GPU-{name}-{i}",
            index=i,
            count=10,
            devmem=CARD_MEM,
            devcore=100,
            type="NVIDIA-A100",
            mode="hami-core",
        )
        for i in range(cards)
    ]
    ann = {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices), **(extra or {})}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": ann}}


def ctr(name: str, mem: int | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "busybox"}
    if mem is not None:
        c["resources"] = {"limits": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": mem}}
    return c


def pod(name: str, mem: int = 4000, *, init_mem: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [ctr("main", mem)]}
    if init_mem is not None:
        spec["initContainers"] = [ctr("setup", init_mem)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "annotations": {}},
        "spec": spec,
        "status": {"phase": "Pending"},
    }


def annotated(p: dict[str, Any], annotations: dict[str, str], node: str | None) -> dict[str, Any]:
    """``p`` as the API server holds it after the decision write (and the bind, if ``node``)."""
    out = copy.deepcopy(p)
    out["metadata"]["annotations"].update(annotations)
    if node is not None:
        out["spec"]["nodeName"] = node
    return out


def used_mem(sched: Scheduler, node: str = "n1") -> int:
    return sum(c.usedmem for c in sched.state.nodes[node].cards)


@pytest.fixture
def sched() -> Scheduler:
    return Scheduler(default_registry())


@pytest.fixture
def sync(sched: Scheduler) -> LedgerSync:
    s = LedgerSync(sched)
    s.node_changed(gpu_node("n1"))
    return s


def decide(sync: LedgerSync, p: dict[str, Any]) -> dict[str, str]:
    """What ExtenderService.filter does: decide (reserving) and mark the pod assumed."""
    d = sync.scheduler.decide(p, candidates=["n1"], now=1)
    assert d.node == "n1", d.reason
    sync.assumed.add(p["metadata"]["uid"])
    return dict(d.annotations)


def test_bound_pod_with_an_allocation_counts(sync: LedgerSync, sched: Scheduler) -> None:
    # decided by another replica (or before a restart): this process holds no reservation
    other = Scheduler(default_registry())
    other.observe_node(gpu_node("n1"))
    ann = dict(other.decide(pod("a"), candidates=["n1"]).annotations)
    sync.pod_changed(annotated(pod("a"), ann, "n1"))
    assert used_mem(sched) == 4000
    assert sched.state.pods["uid-a"].node == "n1"
    # the same event again (resync) is idempotent
    sync.pod_changed(annotated(pod("a"), ann, "n1"))
    assert used_mem(sched) == 4000


def test_bound_pod_without_hami_annotations_is_not_ours(sync: LedgerSync, sched: Scheduler) -> None:
    sync.pod_changed(annotated(pod("plain"), {}, "n1"))
    assert sched.state.pods == {} and used_mem(sched) == 0


def test_assumed_unbound_pod_keeps_its_reservation_until_bound(sync: LedgerSync, sched: Scheduler) -> None:
    p = pod("a")
    ann = decide(sync, p)
    assert used_mem(sched) == 4000
    # our own decision write comes back through the watch before the bind: still reserved
    sync.pod_changed(annotated(p, ann, None))
    assert used_mem(sched) == 4000 and "uid-a" in sync.assumed
    # bound: counted from the API object, no longer merely assumed
    sync.pod_changed(annotated(p, ann, "n1"))
    assert used_mem(sched) == 4000 and "uid-a" not in sync.assumed


def test_stale_annotations_on_an_unbound_pod_hold_nothing_hami_f2(sync: LedgerSync, sched: Scheduler) -> None:
    """HAMi F2: a pod filtered once keeps its hami.io/vgpu-* annotations when it later fails to fit;
    every later update re-added the phantom allocation. Here an unbound, unassumed pod holds nothing."""
    p = pod("a")
    ann = decide(sync, p)
    sync.forget("uid-a")  # e.g. its bind failed and the reservation was rolled back
    assert used_mem(sched) == 0
    # kube-scheduler updates the pod (PodScheduled=False): the old annotations are still there
    stale = annotated(p, ann, None)
    stale["status"]["conditions"] = [{"type": "PodScheduled", "status": "False"}]
    sync.pod_changed(stale)
    sync.pod_changed(stale)
    assert used_mem(sched) == 0 and sched.state.pods == {}
    # and a fresh process that never decided it does not count it either
    fresh = LedgerSync(Scheduler(default_registry()))
    fresh.node_changed(gpu_node("n1"))
    fresh.pod_changed(stale)
    assert used_mem(fresh.scheduler) == 0


def test_unbound_pod_not_assumed_drops_an_old_reservation(sync: LedgerSync, sched: Scheduler) -> None:
    p = pod("a")
    decide(sync, p)
    sync.assumed.discard("uid-a")  # no longer assumed (e.g. forgotten elsewhere)
    sync.pod_changed(p)
    assert used_mem(sched) == 0


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_terminal_phase_frees_the_usage(sync: LedgerSync, sched: Scheduler, phase: str) -> None:
    p = pod("a")
    ann = decide(sync, p)
    bound = annotated(p, ann, "n1")
    sync.pod_changed(bound)
    assert used_mem(sched) == 4000
    forgotten: list[str] = []
    sync.on_forget.append(forgotten.append)
    bound["status"]["phase"] = phase
    sync.pod_changed(bound)
    assert used_mem(sched) == 0 and sched.state.pods == {}
    assert forgotten == ["uid-a"]
    # a later event of the finished pod (still annotated, still bound) does not bring it back
    sync.pod_changed(bound)
    assert used_mem(sched) == 0


def test_terminal_phase_of_an_assumed_pod_frees_it(sync: LedgerSync, sched: Scheduler) -> None:
    p = pod("a")
    decide(sync, p)
    p["status"]["phase"] = "Failed"
    sync.pod_changed(p)
    assert used_mem(sched) == 0 and "uid-a" not in sync.assumed


def test_deleted_pod_frees_the_usage(sync: LedgerSync, sched: Scheduler) -> None:
    p = pod("a")
    bound = annotated(p, decide(sync, p), "n1")
    sync.pod_changed(bound)
    sync.pod_deleted(bound)
    assert used_mem(sched) == 0 and "uid-a" not in sync.assumed


def test_terminating_bound_pod_keeps_its_usage(sync: LedgerSync, sched: Scheduler) -> None:
    """deletionTimestamp set: the containers may still run until the kubelet confirms; HAMi keeps it."""
    p = pod("a")
    bound = annotated(p, decide(sync, p), "n1")
    bound["metadata"]["deletionTimestamp"] = "2026-11-22T08:00:00Z"
    sync.pod_changed(bound)
    assert used_mem(sched) == 4000


def test_init_containers_done_release_their_share(sync: LedgerSync, sched: Scheduler) -> None:
    # init 10000 MiB then app 3000 MiB on (at most) one card each: peak counts while init may run
    p = pod("a", mem=3000, init_mem=10000)
    bound = annotated(p, decide(sync, p), "n1")
    sync.pod_changed(bound)
    peak = used_mem(sched)
    assert peak in (10000, 13000)  # same card: max(init, app); different cards: both
    assert not sched.state.pods["uid-a"].init_released
    # init container still running: nothing changes
    bound["status"]["initContainerStatuses"] = [{"name": "setup", "state": {"running": {}}}]
    sync.pod_changed(bound)
    assert used_mem(sched) == peak
    # init failed (exit 1): still not released (it will be retried)
    bound["status"]["initContainerStatuses"] = [{"name": "setup", "state": {"terminated": {"exitCode": 1}}}]
    sync.pod_changed(bound)
    assert used_mem(sched) == peak
    # init exited 0: only the app container's usage remains
    bound["status"]["initContainerStatuses"] = [{"name": "setup", "state": {"terminated": {"exitCode": 0}}}]
    sync.pod_changed(bound)
    assert used_mem(sched) == 3000
    assert sched.state.pods["uid-a"].init_released
    # and it does not re-inflate on the next event
    sync.pod_changed(bound)
    assert used_mem(sched) == 3000


def test_init_containers_done_needs_every_init_container() -> None:
    p = pod("a", init_mem=1000)
    p["spec"]["initContainers"].append(ctr("second"))
    assert not init_containers_done(p)
    p["status"]["initContainerStatuses"] = [{"state": {"terminated": {"exitCode": 0}}}]
    assert not init_containers_done(p)  # one of two reported
    p["status"]["initContainerStatuses"].append({"state": {"terminated": {"exitCode": 0}}})
    assert init_containers_done(p)
    assert not init_containers_done(pod("no-init"))


def test_corrupt_allocation_annotation_is_recorded_not_fatal(sync: LedgerSync, sched: Scheduler) -> None:
    bad = annotated(pod("bad"), {keys.VGPU_DEVICES_ALLOCATED: "GPU-x,NVIDIA,not-a-number,0:;"}, "n1")
    sync.pod_changed(bad)  # must not raise
    assert "uid-bad" in sync.pod_errors
    assert sched.state.pods == {} and used_mem(sched) == 0
    # other pods are still processed normally
    good = pod("good")
    sync.pod_changed(annotated(good, decide(sync, good), "n1"))
    assert used_mem(sched) == 4000
    # once the annotation is readable the error is cleared; deletion clears it too
    other = Scheduler(default_registry())
    other.observe_node(gpu_node("n1"))
    fixed = annotated(pod("bad"), dict(other.decide(pod("bad"), candidates=["n1"]).annotations), "n1")
    sync.pod_changed(fixed)
    assert "uid-bad" not in sync.pod_errors and used_mem(sched) == 8000
    sync.pod_changed(bad)
    assert "uid-bad" in sync.pod_errors
    sync.pod_deleted(bad)
    assert "uid-bad" not in sync.pod_errors


def test_node_events_skip_unchanged_registration(sched: Scheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    sync = LedgerSync(sched)
    calls: list[str] = []
    real = sched.observe_node

    def counting(node: Any) -> str | None:
        calls.append(node["metadata"]["name"])
        return real(node)

    monkeypatch.setattr(sched, "observe_node", counting)
    n = gpu_node("n1")
    sync.node_changed(n)
    assert calls == ["n1"]
    # status heartbeats, labels, the node lock: no re-registration
    n2 = copy.deepcopy(n)
    n2["metadata"]["labels"] = {"x": "y"}
    n2["metadata"]["annotations"][keys.NODE_LOCK] = "2026-11-22T08:00:00Z,ns,p"
    n2["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    sync.node_changed(n2)
    assert calls == ["n1"]
    # a hami.io/node-* change is re-read
    n3 = gpu_node("n1", cards=3)
    sync.node_changed(n3)
    assert calls == ["n1", "n1"] and len(sched.state.nodes["n1"].cards) == 3
    # a device cordon is re-read
    n4 = gpu_node("n1", cards=3, extra={keys.DEVICE_CORDON: "GPU-n1-0"})
    sync.node_changed(n4)
    assert calls == ["n1", "n1", "n1"]
    # after a delete the same registration is read again
    sync.node_deleted(n4)
    assert "n1" not in sched.state.nodes
    sync.node_changed(n4)
    assert calls[-1] == "n1" and len(calls) == 4 and "n1" in sched.state.nodes


def test_node_with_a_bad_registration_is_removed_and_reported(sync: LedgerSync, sched: Scheduler) -> None:
    broken = gpu_node("n1")
    broken["metadata"]["annotations"][keys.NODE_NVIDIA_REGISTER] = "{not json"
    sync.node_changed(broken)
    assert "n1" not in sched.state.nodes and "n1" in sched.node_errors
    sync.node_deleted(broken)
    assert "n1" not in sched.node_errors


def test_usage_survives_a_node_reregistration(sync: LedgerSync, sched: Scheduler) -> None:
    p = pod("a")
    sync.pod_changed(annotated(p, decide(sync, p), "n1"))
    sync.node_changed(gpu_node("n1", extra={"hami.io/node-handshake": "Reported 2026-11-22 08:00:00"}))
    assert used_mem(sched) == 4000


def test_a_node_whose_device_plugin_is_gone_offers_no_cards(sched: Scheduler) -> None:
    """kubelet's allocatable is part of what is watched: when the plugin goes (allocatable 0 with
    the registration annotation left behind) the node's cards go, and come back with the plugin."""
    sync = LedgerSync(sched)
    n = gpu_node("n1")
    n["status"] = {"allocatable": {"nvidia.com/gpu": "20", "cpu": "2"}}
    sync.node_changed(n)
    assert "n1" in sched.state.nodes
    gone = copy.deepcopy(n)
    gone["status"]["allocatable"]["nvidia.com/gpu"] = "0"
    sync.node_changed(gone)
    assert "n1" not in sched.state.nodes
    sync.node_changed(n)
    assert "n1" in sched.state.nodes
