"""Hygon DCU (HAMi CommonWord ``DCU``): ``hygon.com/dcunum`` cards, ``dcumem`` MiB (times the
configured ``memoryFactor``; none given: the whole card), ``dcucores`` percent.

Inventory: ``hami.io/node-dcu-register`` in HAMi's legacy colon form (JSON is read too); handshake
``hami.io/node-handshake-dcu``. Filters: ``hygon.com/use-dcutype`` / ``nouse-dcutype`` (substring of
the card type, case-insensitive) and ``hygon.com/use-gpuuuid`` / ``nouse-gpuuuid``. Decision:
``hami.io/dcu-devices-to-allocate`` / ``-allocated``; lock ``hami.io/mutex.lock``.
"""

from __future__ import annotations

from hami.devices.common import SpecBackend, VendorSpec
from hami.devices.hygon_config import HygonConfig

VENDOR = "DCU"


class HygonBackend(SpecBackend):
    """Hygon DCUs shared by memory and cores (HAMi's shared capacity checks)."""

    def __init__(self, config: HygonConfig | None = None) -> None:
        c = config if config is not None else HygonConfig()
        self.config = c
        super().__init__(
            VendorSpec(
                vendor=VENDOR,
                count_name=c.resource_count_name,
                memory_name=c.resource_memory_name,
                core_name=c.resource_core_name,
                memory_factor=c.memory_factor,
                register_key="hami.io/node-dcu-register",
                handshake="hami.io/node-handshake-dcu",
                to_allocate_key="hami.io/dcu-devices-to-allocate",
                allocated_key="hami.io/dcu-devices-allocated",
                use_type_key="hygon.com/use-dcutype",
                nouse_type_key="hygon.com/nouse-dcutype",
                use_uuid_key="hygon.com/use-gpuuuid",
                nouse_uuid_key="hygon.com/nouse-gpuuuid",
            )
        )
