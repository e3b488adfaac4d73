"""Enflame GCU whole cards (HAMi CommonWord ``GCU``): ``enflame.com/gcu``.

Inventory from the node's capacity of ``enflame.com/gcu``: cards ``<node>-GCU-<i>`` with memory and
cores 100 each, one slot (HAMi's ids and sizes). Exclusive: a card in use is refused. Decision:
``hami.io/enflame-gcu-devices-to-allocate`` / ``-allocated``; no node lock, no card filters (as
HAMi). The ``enflame:`` section also gives the DRS backend (:mod:`hami.devices.enflame_drs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hami.devices.base import NodeCards
from hami.devices.common import (
    SpecBackend,
    VendorSpec,
    WholeCards,
    capacity,
    pod_keys,
)
from hami.devices.enflame_config import EnflameConfig
from hami.devices.enflame_drs import EnflameDRSBackend

VENDOR = "GCU"


class EnflameGCUBackend(WholeCards, SpecBackend):
    config_type = EnflameConfig

    def make_spec(self, config: EnflameConfig) -> VendorSpec:
        return VendorSpec(
            vendor=VENDOR, count_name=config.resource_name_gcu, **pod_keys("enflame-gcu"), lock=None
        )

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        n = capacity(node, self.spec.count_name)
        return self.capacity_cards(node, n, type=VENDOR, count=1, mem=100, cores=100)


def enflame_backends(config: EnflameConfig) -> list[SpecBackend]:
    """The ``enflame:`` section's two backends (whole GCUs, then DRS instances), as HAMi registers both."""
    return [EnflameGCUBackend(config), EnflameDRSBackend(config)]
