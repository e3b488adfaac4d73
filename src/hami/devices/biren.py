"""Biren (HAMi CommonWord ``Biren``): whole ``birentech.com/gpu`` devices.

Inventory: ``hami.io/node-biren-register`` (JSON); handshake ``hami.io/node-handshake-biren``.
Filters: ``birentech.com/use-biren`` / ``nouse-biren`` (card type) and ``birentech.com/use-gpuuuid``
/ ``nouse-gpuuuid``. Decision: ``hami.io/Biren-devices-to-allocate`` / ``-allocated`` (HAMi's
capital B); lock ``hami.io/mutex.lock``. A card in use is refused (whole devices only).
"""

from __future__ import annotations

from hami.devices.biren_config import BirenConfig
from hami.devices.common import WholeDeviceBackend

VENDOR = "Biren"


class BirenBackend(WholeDeviceBackend):
    config_type = BirenConfig
    vendor_word = VENDOR
    node_word = "biren"
    domain = "birentech.com"
    type_word = "biren"
