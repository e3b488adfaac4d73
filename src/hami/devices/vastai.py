"""Vastai (HAMi CommonWord ``Vastai``): whole ``vastaitech.com/va`` devices.

Inventory: ``hami.io/node-va-register`` (JSON); handshake ``hami.io/node-handshake-va``. Filters:
``vastaitech.com/use-va`` / ``nouse-va`` (card type) and ``vastaitech.com/use-gpuuuid`` /
``nouse-gpuuuid``. Decision: ``hami.io/Vastai-devices-to-allocate`` / ``-allocated`` (HAMi's capital
V); lock ``hami.io/mutex.lock``. A card in use is refused (whole devices only). HAMi's die/AIC
grouping node score is not implemented (docs/vendors.md).
"""

from __future__ import annotations

from hami.devices.common import SpecBackend, VendorSpec, WholeCards
from hami.devices.vastai_config import VastaiConfig

VENDOR = "Vastai"


class VastaiBackend(WholeCards, SpecBackend):
    def __init__(self, config: VastaiConfig | None = None) -> None:
        c = config if config is not None else VastaiConfig()
        self.config = c
        super().__init__(
            VendorSpec(
                vendor=VENDOR,
                count_name=c.resource_count_name,
                register_key="hami.io/node-va-register",
                handshake="hami.io/node-handshake-va",
                to_allocate_key="hami.io/Vastai-devices-to-allocate",
                allocated_key="hami.io/Vastai-devices-allocated",
                use_type_key="vastaitech.com/use-va",
                nouse_type_key="vastaitech.com/nouse-va",
                use_uuid_key="vastaitech.com/use-gpuuuid",
                nouse_uuid_key="vastaitech.com/nouse-gpuuuid",
            )
        )
