"""Enflame DRS (HAMi ``pkg/device/enflame/device.go``) through the real core (``Scheduler.decide``):
the ``enflame.com/gcu-drs-capacity`` inventory, profile choice, slice accounting, the decision
annotations with their exact wire values, and usage restored from a bound pod."""

from __future__ import annotations

import json
from typing import Any

import pytest
from vendorkit import bound, chosen, pod, scheduler

from hami.config import parse_device_config
from hami.devices.base import RequestError
from hami.devices.enflame_drs import CAPACITY_KEY, EnflameDRSBackend, decode_capacity
from hami.devices.registry import default_registry
from hami.protocol.errors import ProtocolError

PROFILES = {"1g.6gb": "0", "3g.20gb": "1", "6g.40gb": "2"}
NOW = 1_778_573_037


def drs_node(name: str = "gcu", devices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A node as Enflame's device plugin registers it (the capacity of a real S60 node)."""
    value = {"devices": devices or [{"index": "0", "minor": "0", "capacity": 6}], "profiles": PROFILES}
    return {"metadata": {"name": name, "annotations": {CAPACITY_KEY: json.dumps(value)}}}


def test_cards_come_from_the_capacity_annotation() -> None:
    cards = EnflameDRSBackend().node_cards(
        drs_node(devices=[{"index": "0", "minor": "4", "capacity": 6}, {"index": "1", "capacity": "6"}])
    )
    assert cards is not None
    assert [(c.uuid, c.index, c.count, c.totalmem, c.totalcores) for c in cards.cards] == [
        ("gcu-enflame-drs-0", 0, 6, 40960, 100),
        ("gcu-enflame-drs-1", 1, 6, 40960, 100),
    ]
    assert EnflameDRSBackend().node_cards({"metadata": {"name": "plain", "annotations": {}}}) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{", "enflame.com/gcu-drs-capacity: not JSON"),
        ('{"devices":[{"index":"0","capacity":6}],"profiles":{"big":"0"}}', "field 'profiles' has no"),
        ('{"devices":[],"profiles":{"1g.6gb":"0"}}', "field 'devices' must be a non-empty list"),
        (
            '{"devices":[{"index":"0","capacity":"six"}],"profiles":{"1g.6gb":"0"}}',
            "devices[0]: field 'capacity'",
        ),
        ('{"devices":[{"index":"0","capacity":0}],"profiles":{"1g.6gb":"0"}}', "must be positive"),
        (
            '{"devices":[{"index":"0","capacity":6},{"index":"0","capacity":6}],"profiles":{"1g.6gb":"0"}}',
            "devices[1]: field 'index': device 0 is listed twice",
        ),
    ],
)
def test_a_corrupt_capacity_annotation_is_named(value: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_capacity("gcu", value)
    # the node is reported, not crashed on
    sched = scheduler(EnflameDRSBackend())
    node = drs_node()
    node["metadata"]["annotations"][CAPACITY_KEY] = value
    assert sched.observe_node(node) is not None


def test_slices_pick_their_profile_and_write_hamis_annotations() -> None:
    sched = scheduler(EnflameDRSBackend(), drs_node())
    d = sched.decide(pod("p", {"enflame.com/drs-gcu": 3}), now=NOW)
    assert d.node == "gcu"
    assert d.annotations == {
        "hami.io/vgpu-node": "gcu",
        "hami.io/vgpu-time": str(NOW),
        "hami.io/enflame-vgpu-devices-allocated": "gcu-enflame-drs-0,Enflame,20480,50:;",
        "enflame.com/gcu-assigned": "false",
        "enflame.com/gcu-assigned-time": f"{NOW}000000000",
        "enflame.com/gcu-assigned-index": "0",
        "enflame.com/gcu-assigned-id": "0",
        "enflame.com/gcu-assigned-minor": "0",
        "enflame.com/gcu-request-size": "3",
        "assigned-containers": '{"c0":{"allocated":false,"request":3,"profileID":"1","profileName":"3g.20gb"}}',
    }
    # no to-allocate key (HAMi registers only the allocated one for Enflame) and no lock
    assert EnflameDRSBackend().lock_key is None


def test_used_counts_slices_and_every_slice_must_be_free() -> None:
    sched = scheduler(EnflameDRSBackend(), drs_node())
    assert sched.decide(pod("a", {"enflame.com/drs-gcu": 3})).node == "gcu"
    (card,) = sched.state.nodes["gcu"].cards
    assert (card.used, card.usedmem, card.usedcores) == (3, 20480, 50)
    assert sched.decide(pod("b", {"enflame.com/drs-gcu": 1})).node == "gcu"
    # 2 slices left: the 3-slice profile needs all three (HAMi checks for one free slice only)
    assert sched.decide(pod("c", {"enflame.com/drs-gcu": 3})).failed == {
        "gcu": "1/1 CardTimeSlicingExhausted"
    }
    assert sched.decide(pod("d", {"enflame.com/drs-gcu": 1})).node == "gcu"
    assert (card.used, card.usedmem) == (5, 20480 + 2 * 6144)


def test_an_unknown_slice_count_is_mode_not_fit() -> None:
    sched = scheduler(EnflameDRSBackend(), drs_node())
    assert sched.decide(pod("p", {"enflame.com/drs-gcu": 2})).failed == {"gcu": "1/1 ModeNotFit"}


@pytest.mark.parametrize(
    ("limits", "profile"),
    [
        ({"enflame.com/gcu-memory": 6}, "1g.6gb"),
        ({"enflame.com/gcu-memory": 7}, "3g.20gb"),  # the smallest profile covering 7 GiB
        ({"enflame.com/gcu-memory": 20000}, "3g.20gb"),  # > 2 x 40: MiB, 20 GiB rounded up
        ({"enflame.com/gcu-core": 17}, "1g.6gb"),  # 1 of 6 slices = 17 %
        ({"enflame.com/gcu-core": 18}, "3g.20gb"),
        ({"enflame.com/gcu-memory": 6, "enflame.com/gcu-core": 60}, "6g.40gb"),
    ],
)
def test_memory_and_cores_pick_the_smallest_fitting_profile(limits: dict[str, int], profile: str) -> None:
    sched = scheduler(EnflameDRSBackend(), drs_node())
    d = sched.decide(pod("p", limits))
    assert json.loads(d.annotations["assigned-containers"])["c0"]["profileName"] == profile


def test_too_much_memory_or_a_bad_request_is_refused() -> None:
    sched = scheduler(EnflameDRSBackend(), drs_node())
    assert sched.decide(pod("p", {"enflame.com/gcu-memory": 41})).failed == {"gcu": "1/1 ModeNotFit"}
    for limits, message in (
        ({"enflame.com/gcu-memory": 0}, "enflame.com/gcu-memory: must be greater than 0"),
        ({"enflame.com/gcu-core": 101}, "enflame.com/gcu-core: 101 is not in (0, 100]"),
    ):
        d = sched.decide(pod("q", limits))
        assert d.invalid and message in (d.reason or "")
    with pytest.raises(RequestError):
        EnflameDRSBackend().parse_container(
            {"name": "c", "resources": {"limits": {"enflame.com/gcu-core": 0}}}
        )


def test_each_container_gets_one_instance_and_its_record() -> None:
    sched = scheduler(
        EnflameDRSBackend(),
        drs_node(
            devices=[{"index": "0", "minor": "8", "capacity": 6}, {"index": "1", "minor": "9", "capacity": 6}]
        ),
    )
    d = sched.decide(pod("p", {"enflame.com/drs-gcu": 6}, {}, {"enflame.com/drs-gcu": 1}), now=NOW)
    assert chosen(d, "Enflame") == [["gcu-enflame-drs-1"], [], ["gcu-enflame-drs-0"]]
    ann = d.annotations
    # index, minor and size are the first placed container's (HAMi)
    assert (ann["enflame.com/gcu-assigned-index"], ann["enflame.com/gcu-assigned-minor"]) == ("1", "9")
    assert ann["enflame.com/gcu-request-size"] == "6"
    assert json.loads(ann["assigned-containers"]) == {
        "c0": {"allocated": False, "request": 6, "profileID": "2", "profileName": "6g.40gb"},
        "c2": {"allocated": False, "request": 1, "profileID": "0", "profileName": "1g.6gb"},
    }


def test_uuid_filters() -> None:
    sched = scheduler(
        EnflameDRSBackend(),
        drs_node(devices=[{"index": "0", "capacity": 6}, {"index": "1", "capacity": 6}]),
    )
    d = sched.decide(
        pod("p", {"enflame.com/drs-gcu": 1}, annotations={"enflame.com/nouse-gpuuuid": "gcu-enflame-drs-1"})
    )
    assert chosen(d, "Enflame") == [["gcu-enflame-drs-0"]]


def test_a_bound_pods_slices_are_restored_from_its_allocation() -> None:
    """After a restart the slices come back from the record and the node's profiles."""
    first = scheduler(EnflameDRSBackend(), drs_node())
    p = pod("p", {"enflame.com/drs-gcu": 3})
    d = first.decide(p, now=NOW)
    fresh = scheduler(EnflameDRSBackend(), drs_node())
    alloc = fresh.allocation_of(bound(p, d.annotations), "gcu")
    assert alloc is not None
    assert alloc.containers == first.state.pods[alloc.uid].containers  # equal to the reservation
    fresh.state.add_pod(alloc)
    (card,) = fresh.state.nodes["gcu"].cards
    assert (card.used, card.usedmem, card.usedcores) == (3, 20480, 50)
    assert fresh.decide(pod("q", {"enflame.com/drs-gcu": 6})).failed == {
        "gcu": "1/1 CardTimeSlicingExhausted"
    }
    fresh.state.remove_pod(alloc.uid)
    assert (card.used, card.usedmem, card.usedcores) == (0, 0, 0)


def test_the_enflame_section_gives_the_gcu_and_drs_backends() -> None:
    cfg, _ = parse_device_config("enflame: {}\n")
    reg = default_registry(cfg)
    assert [b.vendor for b in reg] == ["NVIDIA", "GCU", "Enflame"]
    assert {"enflame.com/drs-gcu", "enflame.com/gcu-memory", "enflame.com/gcu-core"} <= set(
        reg.resource_names()
    )


@pytest.mark.parametrize(
    ("section", "count_name"),
    [
        ("enflame: {}\n", "enflame.com/drs-gcu"),
        # HAMi's chart sets only the legacy name: HAMi then counts DRS slices under it
        ("enflame: {resourceNameVGCU: enflame.com/vgcu}\n", "enflame.com/vgcu"),
        ("enflame: {resourceNameVGCU: enflame.com/vgcu, resourceNameDRSGCU: x.com/drs}\n", "x.com/drs"),
    ],
)
def test_the_drs_count_name_is_resolved_as_hami_does(section: str, count_name: str) -> None:
    cfg, _ = parse_device_config(section)
    (drs,) = [b for b in default_registry(cfg) if b.vendor == "Enflame"]
    assert drs.resource_names[0] == count_name
    sched = scheduler(drs, drs_node())
    assert chosen(sched.decide(pod("p", {count_name: 1})), "Enflame") == [["gcu-enflame-drs-0"]]


def test_the_webhook_routes_drs_pods_and_denies_a_bad_request_naming_the_field() -> None:
    from hami.webhook.mutate import WebhookPolicy, mutate_pod

    cfg, _ = parse_device_config("enflame: {}\n")
    policy = WebhookPolicy.from_config(cfg)
    ok = mutate_pod(
        pod("p", {"enflame.com/gcu-memory": 6}), namespace="ns", namespace_labels={}, policy=policy
    )
    assert ok.allowed and ok.managed
    assert any(op["path"] == "/spec/schedulerName" and op["value"] == "hami-scheduler" for op in ok.patch)
    bad = mutate_pod(
        pod("q", {"enflame.com/gcu-core": 101}), namespace="ns", namespace_labels={}, policy=policy
    )
    assert not bad.allowed and bad.code == 400
    assert "container 'c0': enflame.com/gcu-core: 101 is not in (0, 100]" in bad.message
