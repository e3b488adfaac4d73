"""``amd:`` — the AMD section of ``device-config.yaml``, next to its backend
(:mod:`hami.devices.amd`); composed into :class:`hami.config.DeviceConfig`."""

from __future__ import annotations

from hami.config._base import SectionModel
from hami.config._types import ResourceName

__all__ = ["AMDConfig"]


class AMDConfig(SectionModel):
    """``amd:`` — memory in MiB, cores in percent."""

    resource_count_name: ResourceName = "amd.com/gpu"
    resource_memory_name: ResourceName = "amd.com/gpumem"
    resource_memory_percentage_name: ResourceName = "amd.com/gpumem-percentage"
    resource_core_name: ResourceName = "amd.com/gpucores"
