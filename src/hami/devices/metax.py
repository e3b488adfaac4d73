"""Metax whole GPUs (HAMi CommonWord ``Metax-GPU``): ``metax-tech.com/gpu``.

Inventory from the node's capacity (HAMi): cards ``<node>-metax-<i>``, 65536 MiB, 100 cores, one
slot; exclusive. No card filters, no lock (as HAMi). Decision
``hami.io/metax-gpu-devices-to-allocate`` / ``-allocated``. Node score (HAMi): from the node's
``metax-tech.com/gpu.topology.losses`` (binpack: 2000 - loss for the pod's card count) or
``metax-tech.com/gpu.topology.scores`` (spread: 2000 - score), JSON maps of card count to value
written by Metax's device plugin; a missing or unreadable annotation adds nothing.

Metax sGPU (``sgpu``, ``vcore``, ``vmemory``) is its own backend, :mod:`hami.devices.metax_sgpu`,
built from the same ``metax:`` section (:func:`metax_backends`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from hami.devices.base import Card, DeviceBackend, DeviceRequest, NodeCards
from hami.devices.common import (
    NodeFacts,
    SpecBackend,
    VendorSpec,
    WholeCards,
    capacity,
    node_annotations,
    pod_keys,
)
from hami.devices.metax_config import MetaxConfig

VENDOR = "Metax-GPU"
LOSSES_KEY = "metax-tech.com/gpu.topology.losses"
SCORES_KEY = "metax-tech.com/gpu.topology.scores"


def _count_map(value: str | None) -> dict[int, int]:
    """``{"1": 0, "2": 10}`` -> ``{1: 0, 2: 10}``; anything unreadable -> {} (HAMi logs and scores 0)."""
    if not value:
        return {}
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[int, int] = {}
    for k, v in raw.items():
        try:
            out[int(k)] = int(v)
        except (TypeError, ValueError):
            continue
    return out


class Topology(NodeFacts):
    """The node's loss and score tables, carried on each of its Metax cards (immutable)."""

    __slots__ = ("losses", "scores")

    def __init__(self, losses: dict[int, int], scores: dict[int, int]) -> None:
        self.losses = losses
        self.scores = scores


class MetaxGPUBackend(WholeCards, SpecBackend):
    config_type = MetaxConfig
    #: HAMi: every container of a pod on the same GPU (so at most one container can have one)
    one_card_per_pod = True

    def make_spec(self, config: MetaxConfig) -> VendorSpec:
        return VendorSpec(
            vendor=VENDOR, count_name=config.resource_count_name, **pod_keys("metax-gpu"), lock=None
        )

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        annotations = node_annotations(node)
        topology = Topology(_count_map(annotations.get(LOSSES_KEY)), _count_map(annotations.get(SCORES_KEY)))
        n = capacity(node, self.spec.count_name)
        return self.capacity_cards(
            node, n, type=VENDOR, id_word="metax", count=1, mem=65536, cores=100, payload=topology
        )

    # --- hook: PolicyNodeScore ------------------------------------------------------------------
    def policy_node_score(
        self, cards: Sequence[Card], requests: Sequence[DeviceRequest], node_policy: str
    ) -> float:
        topology = cards[0].payload if cards else None
        if not isinstance(topology, Topology):
            return 0.0
        table = topology.losses if node_policy == "binpack" else topology.scores
        count = sum(r.count for r in requests)
        if count not in table:
            return 0.0
        return 2000.0 - table[count]


def metax_backends(config: MetaxConfig | None = None) -> list[DeviceBackend]:
    """The ``metax:`` section's backends: whole GPUs, then sGPU slices (HAMi registers both)."""
    from hami.devices.metax_sgpu import MetaxSGPUBackend

    return [MetaxGPUBackend(config), MetaxSGPUBackend(config)]
