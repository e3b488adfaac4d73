"""Vastai die mode (HAMi ``pkg/device/vastai``) through the real core (``Scheduler.decide``): dies
registered with ``custominfo`` ``{"DeviceStrategy": "die", "AIC": ...}`` are taken from the AIC
card with the most eligible dies first, and the node score prefers (binpack) or avoids (spread)
the node where a pod's dies share one AIC card."""

from __future__ import annotations

import json
from typing import Any

import pytest
from vendorkit import chosen, pod, scheduler

from hami.devices.base import DeviceRequest
from hami.devices.vastai import VastaiBackend

REGISTER = "hami.io/node-va-register"


def die_node(name: str, aics: list[str], *, strategy: str = "die") -> dict[str, Any]:
    """A node whose Vastai plugin registered one die per entry of ``aics`` (the die's AIC card)."""
    devices = [
        {
            "id": f"{name}-die-{i}",
            "index": i,
            "count": 1,
            "devmem": 16384,
            "devcore": 100,
            "type": "VA1",
            "health": True,
            "custominfo": {"DeviceStrategy": strategy, "AIC": aic},
        }
        for i, aic in enumerate(aics)
    ]
    return {"metadata": {"name": name, "annotations": {REGISTER: json.dumps(devices)}}}


def test_dies_are_taken_from_the_fullest_aic_card_first() -> None:
    sched = scheduler(VastaiBackend(), die_node("n", ["a", "a", "b", "b", "b"]))
    # walked highest index first: b has 3 eligible dies, a has 2
    d = sched.decide(pod("p", {"vastaitech.com/va": 2}))
    assert chosen(d, "Vastai") == [["n-die-4", "n-die-3"]]
    # now b has one free die, a two: a's pair
    d = sched.decide(pod("q", {"vastaitech.com/va": 2}))
    assert chosen(d, "Vastai") == [["n-die-1", "n-die-0"]]
    d = sched.decide(pod("r", {"vastaitech.com/va": 1}))
    assert chosen(d, "Vastai") == [["n-die-2"]]
    assert d.annotations["hami.io/Vastai-devices-allocated"] == "n-die-2,Vastai,16384,100:;"


def test_without_die_mode_the_shared_order_applies() -> None:
    sched = scheduler(VastaiBackend(), die_node("n", ["a", "a", "b", "b", "b"], strategy="card"))
    d = sched.decide(pod("p", {"vastaitech.com/va": 2}))
    assert chosen(d, "Vastai") == [["n-die-4", "n-die-3"]]
    assert VastaiBackend().node_score(sched.state.nodes["n"].cards, []) == 0.0


@pytest.mark.parametrize(("node_policy", "expected"), [("binpack", "same-aic"), ("spread", "split")])
def test_the_node_score_weighs_dies_on_one_aic_card(node_policy: str, expected: str) -> None:
    """Two nodes alike in every count: on one the pod's two dies would share an AIC card (score
    1.0), on the other they would be split (0.5). Binpack prefers the higher score (HAMi); with
    equal scores the name decides ("same-aic" first), so spread's choice is the score's."""
    b = VastaiBackend()
    sched = scheduler(b, die_node("split", ["a", "b", "c"]), die_node("same-aic", ["a", "a", "b"]))
    sched.node_policy = node_policy
    cards = {n: sched.state.nodes[n].cards for n in ("split", "same-aic")}
    request = sched.decide(pod("probe", {"vastaitech.com/va": 2}), reserve=False)
    assert request.node == expected
    two = [DeviceRequest(vendor="Vastai", count=2)]
    assert (b.node_score(cards["split"], two), b.node_score(cards["same-aic"], two)) == (0.5, 1.0)
