"""Biren (HAMi CommonWord ``Biren``): whole ``birentech.com/gpu`` devices.

Inventory: ``hami.io/node-biren-register`` (JSON); handshake ``hami.io/node-handshake-biren``.
Filters: ``birentech.com/use-biren`` / ``nouse-biren`` (card type) and ``birentech.com/use-gpuuuid``
/ ``nouse-gpuuuid``. Decision: ``hami.io/Biren-devices-to-allocate`` / ``-allocated`` (HAMi's
capital B); lock ``hami.io/mutex.lock``. A card in use is refused (whole devices only).
"""

from __future__ import annotations

from hami.devices.biren_config import BirenConfig
from hami.devices.common import SpecBackend, VendorSpec, WholeCards

VENDOR = "Biren"


class BirenBackend(WholeCards, SpecBackend):
    def __init__(self, config: BirenConfig | None = None) -> None:
        c = config if config is not None else BirenConfig()
        self.config = c
        super().__init__(
            VendorSpec(
                vendor=VENDOR,
                count_name=c.resource_count_name,
                register_key="hami.io/node-biren-register",
                handshake="hami.io/node-handshake-biren",
                to_allocate_key="hami.io/Biren-devices-to-allocate",
                allocated_key="hami.io/Biren-devices-allocated",
                use_type_key="birentech.com/use-biren",
                nouse_type_key="birentech.com/nouse-biren",
                use_uuid_key="birentech.com/use-gpuuuid",
                nouse_uuid_key="birentech.com/nouse-gpuuuid",
            )
        )
