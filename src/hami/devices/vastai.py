"""Vastai (HAMi CommonWord ``Vastai``): whole ``vastaitech.com/va`` devices.

Inventory: ``hami.io/node-va-register`` (JSON); handshake ``hami.io/node-handshake-va``. Filters:
``vastaitech.com/use-va`` / ``nouse-va`` (card type) and ``vastaitech.com/use-gpuuuid`` /
``nouse-gpuuuid``. Decision: ``hami.io/Vastai-devices-to-allocate`` / ``-allocated`` (HAMi's capital
V); lock ``hami.io/mutex.lock``. A card in use is refused (whole devices only). HAMi's die/AIC
grouping node score is not implemented (docs/vendors.md).
"""

from __future__ import annotations

from hami.devices.common import WholeDeviceBackend
from hami.devices.vastai_config import VastaiConfig

VENDOR = "Vastai"


class VastaiBackend(WholeDeviceBackend):
    config_type = VastaiConfig
    vendor_word = VENDOR
    node_word = "va"
    domain = "vastaitech.com"
    type_word = "va"
