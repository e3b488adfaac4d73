"""Iluvatar (one backend per ``iluvatars:`` entry; HAMi CommonWord = the entry's ``commonWord``).

Resources (defaults from the chip name): ``iluvatar.ai/<chip>-vgpu`` cards, ``<chip>.vMem`` in units
of 256 MiB (none given: the whole card), ``<chip>.vCore`` percent; a request for more than one card
takes every card's cores (HAMi's webhook sets ``vCore`` to 100 x count). Inventory:
``hami.io/node-<commonWord>-register`` (legacy colon form or JSON); handshake
``hami.io/node-handshake-<commonWord>``. Filters: ``hami.io/use-<commonWord>-uuid`` /
``hami.io/no-use-<commonWord>-uuid``. Decision: ``hami.io/<commonWord>-devices-to-allocate`` /
``-allocated``; lock ``hami.io/mutex.lock``.
"""

from __future__ import annotations

from hami.config.device import IluvatarConfig
from hami.devices.base import DeviceRequest
from hami.devices.common import (
    SpecBackend,
    VendorSpec,
    hami_keys,
    resource_fields,
)

#: Iluvatar memory resources count units of 256 MiB (HAMi)
MEMORY_UNIT_MIB = 256


class IluvatarBackend(SpecBackend):
    config_type = IluvatarConfig

    def make_spec(self, config: IluvatarConfig) -> VendorSpec:
        cw = config.common_word or config.chip_name
        return VendorSpec(
            vendor=cw,
            **resource_fields(config),
            memory_factor=MEMORY_UNIT_MIB,
            legacy_register=True,
            **hami_keys(cw, cw),
            use_uuid_key=f"hami.io/use-{cw}-uuid",
            nouse_uuid_key=f"hami.io/no-use-{cw}-uuid",
        )

    def request(self, cname: str, count: int, mem: int | None, cores: int | None) -> DeviceRequest:
        if count > 1:
            cores = 100  # several cards: each one whole in compute, as HAMi's webhook sets it
        return super().request(cname, count, mem, cores)
