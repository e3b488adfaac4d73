"""Hygon DCU (HAMi CommonWord ``DCU``): ``hygon.com/dcunum`` cards, ``dcumem`` MiB (times the
configured ``memoryFactor``; none given: the whole card), ``dcucores`` percent (none given: 100, as
HAMi v2.10 — a DCU slice takes the card's compute unless it names its cores).

Inventory: ``hami.io/node-dcu-register`` in HAMi's legacy colon form (JSON is read too); handshake
``hami.io/node-handshake-dcu``. Filters: ``hygon.com/use-dcutype`` / ``nouse-dcutype`` (substring of
the card type, case-insensitive) and ``hygon.com/use-gpuuuid`` / ``nouse-gpuuuid``. Decision:
``hami.io/dcu-devices-to-allocate`` / ``-allocated``; lock ``hami.io/mutex.lock``.
"""

from __future__ import annotations

from hami.devices.common import (
    SpecBackend,
    VendorSpec,
    filter_keys,
    hami_keys,
    resource_fields,
)
from hami.devices.hygon_config import HygonConfig

VENDOR = "DCU"


class HygonBackend(SpecBackend):
    """Hygon DCUs shared by memory and cores (HAMi's shared capacity checks)."""

    config_type = HygonConfig

    def make_spec(self, config: HygonConfig) -> VendorSpec:
        return VendorSpec(
            vendor=VENDOR,
            **resource_fields(config),
            memory_factor=config.memory_factor,
            default_cores=100,
            legacy_register=True,
            **hami_keys("dcu", "dcu"),
            **filter_keys("hygon.com", "dcutype"),
        )
