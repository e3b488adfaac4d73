"""Metax sGPU (HAMi ``pkg/device/metax/sdevice.go``) through the scheduling core: requests,
inventory, QoS policies, online/offline classes, MetaLink zones, filters, the decision annotations
and the webhook's defaulting and validation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from vendorkit import bound, chosen, pod, scheduler

from hami.config.device import parse_device_config
from hami.deviceplugin.sources.vendors import vendor_annotations
from hami.devices.base import RequestError
from hami.devices.metax_sgpu import MetaxSGPUBackend
from hami.devices.metax_sgpu_wire import SGPUDevice, encode_sgpu_devices
from hami.devices.registry import default_registry
from hami.scheduling import Scheduler
from hami.webhook.mutate import WebhookPolicy, mutate_pod

V = "Metax-SGPU"
KEY = "metax-tech.com/node-gpu-devices"
QOS = "metax-tech.com/sgpu-qos-policy"
APP = "metax-tech.com/sgpu-app-class"
TOPO = "metax-tech.com/sgpu-topology-aware"


def backend(**config: Any) -> MetaxSGPUBackend:
    cfg, _ = parse_device_config(orjson.dumps({"metax": config}).decode())
    (b,) = [b for b in default_registry(cfg) if isinstance(b, MetaxSGPUBackend)]
    return b


def dev(uuid: str, *, zone: int = 0, qos: str = "", healthy: bool = True, count: int = 16) -> SGPUDevice:
    return SGPUDevice(
        uuid=uuid,
        total_dev_count=count,
        total_compute=100,
        total_vram=65536,
        healthy=healthy,
        qos_policy=qos,
        link_zone=zone,
    )


def node(name: str, *devices: SGPUDevice) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": {KEY: encode_sgpu_devices(devices)}}}


def sgpu(count: int = 1, vcore: Any = None, vmemory: Any = None) -> dict[str, Any]:
    limits: dict[str, Any] = {"metax-tech.com/sgpu": count}
    if vcore is not None:
        limits["metax-tech.com/vcore"] = vcore
    if vmemory is not None:
        limits["metax-tech.com/vmemory"] = vmemory
    return limits


def place(sched: Scheduler, name: str, *limits: dict[str, Any], **annotations: str) -> Any:
    """Decide a pod and reserve it; the decision."""
    return sched.decide(pod(name, *limits, annotations=annotations))


# --- requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vmemory", "mib", "percentage"),
    [
        ("4", 4096, None),  # bare: GiB
        (4, 4096, None),
        ("2048Mi", 2048, None),  # a unit: bytes -> MiB
        ("4Gi", 4096, None),
        ("1500", 1500 * 1024, None),
        ("1000", 0, 100),  # canonically "1k": 1000 bytes, 0 MiB -> the whole card (as HAMi)
        ("1e3", 0, 100),
        ("3000000", 2, None),  # canonically "3M": bytes
        ("0", 0, 100),
    ],
)
def test_vmemory_bare_is_gib_and_with_a_unit_is_bytes(vmemory: Any, mib: int, percentage: int | None) -> None:
    req = backend().parse_container({"name": "c", "resources": {"limits": sgpu(1, 30, vmemory)}})
    assert req is not None
    assert (req.mem, req.mem_percentage, req.cores) == (mib, percentage, 30)


def test_defaults_whole_card_cores_and_memory() -> None:
    req = backend().parse_container({"name": "c", "resources": {"limits": sgpu(2)}})
    assert req is not None
    assert (req.vendor, req.count, req.mem, req.mem_percentage, req.cores) == (V, 2, 0, 100, 100)


@pytest.mark.parametrize(
    ("limits", "resource", "reason"),
    [
        (sgpu(1, 30, "1.5"), "metax-tech.com/vmemory", "not a whole number"),
        (sgpu(1, 30, "-1"), "metax-tech.com/vmemory", "must not be negative"),
        (sgpu(1, 30, "2097152"), "metax-tech.com/vmemory", "too large"),
        (sgpu(1, 30, "lots"), "metax-tech.com/vmemory", "not a valid Kubernetes quantity"),
        (sgpu(1, 101), "metax-tech.com/vcore", "more than 100 percent"),
        ({"metax-tech.com/vmemory": 4}, "metax-tech.com/sgpu", "given without it"),
    ],
)
def test_bad_requests_name_the_resource(limits: dict[str, Any], resource: str, reason: str) -> None:
    with pytest.raises(RequestError) as exc:
        backend().parse_container({"name": "c", "resources": {"limits": limits}})
    assert exc.value.resource == resource and reason in exc.value.reason, str(exc.value)


def test_a_bad_annotation_is_an_invalid_decision_naming_it() -> None:
    sched = scheduler(backend(), node("mx", dev("GPU-a")))
    d = place(sched, "p", sgpu(1, 30, 4), **{APP: "nightly"})
    assert d.invalid and d.node is None
    assert d.reason == (
        f"container 'c0': metadata.annotations[{APP}]: 'nightly' must be one of online, offline"
    )
    d = place(sched, "q", sgpu(2, 30, 4), **{APP: "offline"})
    assert d.invalid and "one sGPU per container" in str(d.reason)
    d = place(sched, "r", sgpu(1, 30, 4), **{QOS: "gold"})
    assert d.invalid and f"metadata.annotations[{QOS}]: 'gold' must be one of" in str(d.reason)
    assert sched.state.nodes["mx"].vendor_cards(V)[0].used == 0  # nothing reserved


# --- inventory -------------------------------------------------------------------------------------


def test_inventory_from_the_node_gpu_devices_annotation() -> None:
    value = (
        '[{"uuid":"GPU-a","bdf":"0000:3b:00.0","model":"C500","totalDevCount":16,"totalCompute":100,'
        '"totalVRam":65536,"availableDevCount":16,"numa":1,"healthy":true,"qosPolicy":"fixed-share",'
        '"linkZone":2},{"uuid":"GPU-b","totalDevCount":0,"totalVRam":65536}]'
    )
    found = backend().node_cards({"metadata": {"name": "mx", "annotations": {KEY: value}}})
    assert found is not None
    (a,) = found.cards
    assert (a.uuid, a.type, a.count, a.totalmem, a.totalcores, a.numa, a.health) == (
        "GPU-a",
        V,
        16,
        65536,
        100,
        1,
        True,
    )
    assert found.rejected == ("card 'GPU-b': field 'count' must be 1..1024, got 0",)


def test_a_corrupt_inventory_marks_the_node_bad_naming_the_annotation() -> None:
    sched = scheduler(backend())
    error = sched.observe_node({"metadata": {"name": "mx", "annotations": {KEY: '[{"uuid": 7}]'}}})
    assert error == f"node mx: {KEY}: device[0]: field 'uuid' must be a string, got 7"


def test_the_fake_device_source_writes_what_the_backend_reads() -> None:
    ann = vendor_annotations(
        {
            "metax": {
                "cards": [
                    {
                        "uuid": "GPU-a",
                        "memory": 65536,
                        "custominfo": {"linkZone": 3, "qosPolicy": "burst-share"},
                    }
                ]
            }
        },
        node_name="mx",
        origin="spec",
    )
    assert orjson.loads(ann[KEY]) == [
        {
            "uuid": "GPU-a",
            "totalDevCount": 10,
            "totalCompute": 100,
            "totalVRam": 65536,
            "healthy": True,
            "qosPolicy": "burst-share",
            "linkZone": 3,
        }
    ]
    found = backend().node_cards({"metadata": {"name": "mx", "annotations": ann}})
    assert found is not None and [c.uuid for c in found.cards] == ["GPU-a"]


# --- the decision ----------------------------------------------------------------------------------


def test_decision_annotations_exactly() -> None:
    sched = scheduler(backend(), node("mx", dev("GPU-a"), dev("GPU-b")))
    p = pod("p", {}, sgpu(1, 60, 4), sgpu(1, 30, "2048Mi"))
    d = sched.decide(p, now=5)
    assert d.node == "mx"
    # spread: the emptier card for each container
    encoded = ";GPU-b,Metax-SGPU,4096,60:;GPU-a,Metax-SGPU,2048,30:;"
    assert d.annotations == {
        "hami.io/vgpu-node": "mx",
        "hami.io/vgpu-time": "5",
        "hami.io/metax-sgpu-devices-to-allocate": encoded,
        "hami.io/metax-sgpu-devices-allocated": encoded,
        "metax-tech.com/gpu-devices-allocated": (
            '[[],[{"uuid":"GPU-b","compute":60,"vRam":4096}],[{"uuid":"GPU-a","compute":30,"vRam":2048}]]'
        ),
        "metax-tech.com/predicate-time": "5000000000",  # the decision time, in ns
    }
    b = backend()
    assert b.lock_key == "hami.io/mutex.lock"
    assert set(d.annotations) - {"hami.io/vgpu-node", "hami.io/vgpu-time"} == set(b.decision_keys)


def test_usage_is_restored_from_the_allocated_annotation() -> None:
    first = scheduler(backend(), node("mx", dev("GPU-a")))
    p = pod("p", sgpu(1, 60, 4), annotations={QOS: "fixed-share"})
    d = first.decide(p)
    again = scheduler(backend(), node("mx", dev("GPU-a")))
    again.state.add_pod(again.allocation_of(bound(p, d.annotations), "mx"))  # type: ignore[arg-type]
    (card,) = again.state.nodes["mx"].vendor_cards(V)
    assert (card.used, card.usedmem, card.usedcores) == (1, 4096, 60)
    # the restored pod holds the card in fixed-share
    assert place(again, "q", sgpu(1, 10, 1), **{QOS: "best-effort"}).failed == {
        "mx": "1/1 CardQosPolicyMismatch"
    }


# --- QoS policies ----------------------------------------------------------------------------------


def test_a_shared_card_takes_only_pods_of_its_qos_policy() -> None:
    sched = scheduler(backend(), node("mx", dev("GPU-a", qos="burst-share")))
    # an idle card switches to any policy
    assert place(sched, "a", sgpu(1, 30, 4), **{QOS: "fixed-share"}).node == "mx"
    assert place(sched, "b", sgpu(1, 30, 4), **{QOS: "best-effort"}).failed == {
        "mx": "1/1 CardQosPolicyMismatch"
    }
    assert place(sched, "c", sgpu(1, 30, 4), **{QOS: "fixed-share"}).node == "mx"
    # a pod without the annotation (the webhook did not run) fits only a card in no policy (HAMi)
    assert place(sched, "d", sgpu(1, 10, 4)).failed == {"mx": "1/1 CardQosPolicyMismatch"}


def test_an_exclusive_slice_skips_the_qos_check_and_leaves_the_card_unset() -> None:
    sched = scheduler(backend(), node("mx", dev("GPU-a", qos="burst-share"), dev("GPU-b", qos="burst-share")))
    d = place(sched, "a", sgpu(2), **{QOS: "fixed-share"})
    assert chosen(d, V) == [["GPU-b", "GPU-a"]]
    assert d.annotations["hami.io/metax-sgpu-devices-allocated"] == (
        "GPU-b,Metax-SGPU,65536,100:GPU-a,Metax-SGPU,65536,100:;"
    )
    # full cards: refused for capacity, not for QoS (an exclusive slice puts the card in no policy)
    assert place(sched, "b", sgpu(1, 0, 1), **{QOS: "best-effort"}).failed == {
        "mx": "2/2 CardInsufficientMemory"
    }


def test_a_card_used_only_by_online_pods_keeps_its_registered_policy() -> None:
    sched = scheduler(backend(), node("mx", dev("GPU-a", qos="burst-share")))
    assert place(sched, "on", sgpu(1, None, 4), **{APP: "online"}).node == "mx"
    assert place(sched, "off", sgpu(1, 30, 4), **{APP: "offline", QOS: "fixed-share"}).failed == {
        "mx": "1/1 CardAppClassMismatch"
    }
    sched2 = scheduler(backend(), node("mx", dev("GPU-a", qos="burst-share")))
    place(sched2, "off1", sgpu(1, 30, 4), **{APP: "offline", QOS: "burst-share"})
    assert place(sched2, "on", sgpu(1, None, 4), **{APP: "online"}).node == "mx"
    assert place(sched2, "off2", sgpu(1, 30, 4), **{APP: "offline", QOS: "burst-share"}).failed == {
        "mx": "1/1 CardAppClassMismatch"
    }


# --- online / offline ------------------------------------------------------------------------------


def test_online_and_offline_pods_keep_to_their_own_cards() -> None:
    sched = scheduler(backend(), node("mx", dev("GPU-a")))
    assert place(sched, "plain", sgpu(1, 30, 4), **{QOS: "best-effort"}).node == "mx"
    for cls in ("online", "offline"):
        assert place(sched, cls, sgpu(1, 30, 4), **{APP: cls, QOS: "best-effort"}).failed == {
            "mx": "1/1 CardAppClassMismatch"
        }
    classed = scheduler(backend(), node("mx", dev("GPU-a")))
    assert place(classed, "off", sgpu(1, 80, 4), **{APP: "offline", QOS: "best-effort"}).node == "mx"
    assert place(classed, "plain", sgpu(1, 10, 4), **{QOS: "best-effort"}).failed == {
        "mx": "1/1 CardAppClassMismatch"
    }
    # an online pod takes no cores: it fits beside 80 % (and 100 %) of the card's cores
    d = place(classed, "on", sgpu(1, 50, 4), **{APP: "online"})
    assert d.annotations["hami.io/metax-sgpu-devices-allocated"] == "GPU-a,Metax-SGPU,4096,0:;"
    assert '"compute"' not in d.annotations["metax-tech.com/gpu-devices-allocated"]


def test_an_online_pod_prefers_cards_with_fewer_online_pods_and_avoids_offline_only_cards() -> None:
    sched = scheduler(backend(), node("mx", dev("GPU-a"), dev("GPU-b"), dev("GPU-c")))
    assert chosen(place(sched, "o1", sgpu(1, 30, 4), **{APP: "offline", QOS: "best-effort"}), V) == [
        ["GPU-c"]
    ]
    assert chosen(place(sched, "n1", sgpu(1, None, 4), **{APP: "online"}), V) == [["GPU-b"]]
    assert chosen(place(sched, "n2", sgpu(1, None, 4), **{APP: "online"}), V) == [["GPU-a"]]
    # a, b: one online pod each; c: offline only -> a or b, the first in card order
    assert chosen(place(sched, "n3", sgpu(1, None, 4), **{APP: "online"}), V) == [["GPU-b"]]


@pytest.mark.parametrize("policy", ["binpack", "spread"])
def test_the_online_node_score_is_policy_neutral(policy: str) -> None:
    sched = scheduler(backend(), node("busy", dev("GPU-a")), node("calm", dev("GPU-b")))
    on = {APP: "online", "hami.io/node-scheduler-policy": policy}
    sched.decide(pod("x", sgpu(1, None, 4), annotations=on), candidates=["busy"])
    sched.decide(pod("y", sgpu(1, None, 4), annotations=on), candidates=["busy"])
    sched.decide(pod("z", sgpu(1, None, 4), annotations=on), candidates=["calm"])
    # busy: 2 online pods (-40), calm: 1 (-20): both policies send the next online pod to calm
    assert sched.decide(pod("p", sgpu(1, None, 4), annotations=on)).node == "calm"


# --- MetaLink zones --------------------------------------------------------------------------------


def zoned_node(name: str = "mx") -> dict[str, Any]:
    return node(
        name,
        dev("GPU-0", zone=1),
        dev("GPU-1", zone=1),
        dev("GPU-2", zone=2),
        dev("GPU-3", zone=2),
        dev("GPU-4", zone=2),
        dev("GPU-5"),
    )


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (2, {"GPU-0", "GPU-1"}),  # the smallest zone with enough cards
        (3, {"GPU-2", "GPU-3", "GPU-4"}),
        (4, {"GPU-0", "GPU-1", "GPU-4", "GPU-3"}),  # across zones, smallest first
        (6, {f"GPU-{i}" for i in range(6)}),
    ],
)
def test_exclusive_cards_come_from_one_metalink_zone_when_one_has_enough(
    count: int, expected: set[str]
) -> None:
    sched = scheduler(backend(), zoned_node())
    (cards,) = chosen(place(sched, "p", sgpu(count)), V)
    assert set(cards) == expected


def test_shared_slices_do_not_follow_zones() -> None:
    sched = scheduler(backend(), zoned_node())
    (cards,) = chosen(place(sched, "p", sgpu(2, 50, 4)), V)
    assert cards == ["GPU-5", "GPU-4"]  # the card policy's order (spread: highest index first)


def linked_and_scattered() -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        node("linked", *(dev(f"L-{i}", zone=1) for i in range(4))),
        node("scattered", *(dev(f"S-{i}", zone=i + 1) for i in range(4))),
    )


@pytest.mark.parametrize("policy", ["binpack", "spread"])
@pytest.mark.parametrize("how", ["annotation", "config"])
def test_topology_aware_exclusive_pods_go_where_their_cards_are_linked(policy: str, how: str) -> None:
    b = backend(sgpuTopologyAware=True) if how == "config" else backend()
    sched = scheduler(b, *linked_and_scattered())
    ann = {"hami.io/node-scheduler-policy": policy}
    if how == "annotation":
        ann[TOPO] = "true"
    assert sched.decide(pod("p", sgpu(2), annotations=ann)).node == "linked"


def test_without_topology_awareness_the_node_order_is_the_usual_one() -> None:
    sched = scheduler(backend(sgpuTopologyAware=True), *linked_and_scattered())
    ann = {TOPO: "false", "hami.io/node-scheduler-policy": "binpack"}
    # no MetaLink term: equal nodes, the first by name
    assert sched.decide(pod("p", sgpu(2), annotations=ann)).node == "linked"
    ann["hami.io/node-scheduler-policy"] = "spread"
    sched2 = scheduler(backend(), *linked_and_scattered())
    assert sched2.decide(pod("q", sgpu(2), annotations=ann)).node == "linked"
    assert b_score(sched2, "scattered") == 0.0


def b_score(sched: Scheduler, name: str) -> float:
    """The MetaLink node score term of a topology-aware pod asking two exclusive sGPUs."""
    b = sched.registry.get(V)
    assert isinstance(b, MetaxSGPUBackend)
    parsed = b.parse_container({"name": "c", "resources": {"limits": sgpu(2)}})
    assert parsed is not None
    req = b.pod_request(parsed, {TOPO: "true"}, "c")
    return b.policy_node_score(sched.state.nodes[name].vendor_cards(V), [req], "binpack")


def test_metalink_score_values() -> None:
    sched = scheduler(backend(), *linked_and_scattered())
    # linked: 2 taken in one zone: 10*10 - (60 idle - 10 taken - 10 rest = 40 lost) = 60
    assert b_score(sched, "linked") == 60 * 10000
    assert b_score(sched, "scattered") == 0


# --- filters and health ----------------------------------------------------------------------------


def test_uuid_filters_and_unhealthy_cards() -> None:
    sched = scheduler(backend(), node("mx", dev("GPU-a"), dev("GPU-b"), dev("GPU-c", healthy=False)))
    assert chosen(place(sched, "u", sgpu(1, 10, 1), **{"metax-tech.com/use-gpuuuid": "GPU-a"}), V) == [
        ["GPU-a"]
    ]
    assert chosen(place(sched, "n", sgpu(1, 10, 1), **{"metax-tech.com/nouse-gpuuuid": "GPU-b"}), V) == [
        ["GPU-a"]
    ]
    assert place(sched, "x", sgpu(1, 10, 1), **{"metax-tech.com/use-gpuuuid": "GPU-z"}).failed == {
        "mx": "1/3 CardUnhealthy, 2/3 CardUuidMismatch"
    }


# --- webhook ---------------------------------------------------------------------------------------


def admit(limits: dict[str, Any], **annotations: str) -> Any:
    cfg, _ = parse_device_config("metax: {}\n")
    p = pod("p", limits, annotations=annotations)
    if not annotations:
        del p["metadata"]["annotations"]
    return mutate_pod(p, namespace="ns", namespace_labels={}, policy=WebhookPolicy.from_config(cfg))


def test_the_webhook_defaults_the_qos_policy_to_best_effort() -> None:
    d = admit(sgpu(1, 60, 4))
    assert d.allowed
    assert {"op": "add", "path": "/metadata/annotations", "value": {QOS: "best-effort"}} in d.patch
    d = admit(sgpu(1, 60, 4), other="x")
    assert {
        "op": "add",
        "path": "/metadata/annotations/metax-tech.com~1sgpu-qos-policy",
        "value": "best-effort",
    } in d.patch
    for kept in (admit(sgpu(1, 60, 4), **{QOS: "fixed-share"}), admit(sgpu(1, None, 4), **{APP: "online"})):
        assert kept.allowed and not [op for op in kept.patch if "annotations" in op["path"]]


@pytest.mark.parametrize(
    ("limits", "annotations", "message"),
    [
        (
            sgpu(1),
            {APP: "batch"},
            f"pod: metadata.annotations[{APP}]: 'batch' must be one of online, offline",
        ),
        (
            sgpu(2),
            {APP: "online"},
            f"pod: metadata.annotations[{APP}]: an online/offline pod must ask for one sGPU",
        ),
        (
            sgpu(1),
            {QOS: "gold"},
            f"pod: metadata.annotations[{QOS}]: 'gold' must be one of best-effort, fixed-share",
        ),
    ],
)
def test_the_webhook_refuses_bad_annotations_naming_them(
    limits: dict[str, Any], annotations: dict[str, str], message: str
) -> None:
    d = admit(limits, **annotations)
    assert not d.allowed and d.code == 400
    assert message in d.message, d.message


def test_only_online_and_topology_aware_exclusive_pods_have_a_node_score_term() -> None:
    b = backend()
    hooks = default_registry(parse_device_config("metax: {}\n")[0]).hooks(V)
    assert hooks.score_scope is not None and hooks.policy_score is not None

    def asks(
        limits: dict[str, Any], annotations: dict[str, str] | None = None, of: MetaxSGPUBackend = b
    ) -> list[Any]:
        parsed = of.parse_container({"name": "c", "resources": {"limits": limits}})
        assert parsed is not None
        return [of.pod_request(parsed, annotations or {}, "c")]

    assert not b.scores(asks(sgpu(1, 30, 4), {QOS: "best-effort"}))
    assert not b.scores(asks(sgpu(2)))  # exclusive, topology awareness off
    assert not b.scores(asks(sgpu(2, 50), {TOPO: "true"}))  # not exclusive
    assert b.scores(asks(sgpu(1, None, 4), {APP: "online"}))
    assert b.scores(asks(sgpu(2), {TOPO: "true"}))
    aware = backend(sgpuTopologyAware=True)
    assert aware.scores(asks(sgpu(2), of=aware))
