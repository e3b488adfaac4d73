"""``hygon:`` — the Hygon section of ``device-config.yaml``, next to its backend
(:mod:`hami.devices.hygon`); composed into :class:`hami.config.DeviceConfig`."""

from __future__ import annotations

from hami.config._base import SectionModel
from hami.config._types import PositiveInt, ResourceName

__all__ = ["HygonConfig"]


class HygonConfig(SectionModel):
    """``hygon:`` — DCU."""

    resource_count_name: ResourceName = "hygon.com/dcunum"
    resource_memory_name: ResourceName = "hygon.com/dcumem"
    resource_core_name: ResourceName = "hygon.com/dcucores"
    memory_factor: PositiveInt = 1
