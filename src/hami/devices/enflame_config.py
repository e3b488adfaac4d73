"""``enflame:`` — the Enflame section of ``device-config.yaml``, next to its backend
(:mod:`hami.devices.enflame`); composed into :class:`hami.config.DeviceConfig`."""

from __future__ import annotations

from hami.config._base import SectionModel
from hami.config._types import ResourceName

__all__ = ["EnflameConfig"]


class EnflameConfig(SectionModel):
    """``enflame:`` — whole GCUs, DRS slices, and the legacy shared-GCU names."""

    resource_name_gcu: ResourceName = "enflame.com/gcu"
    resource_name_drs_gcu: ResourceName = "enflame.com/drs-gcu"
    resource_name_gcu_memory: ResourceName = "enflame.com/gcu-memory"
    resource_name_gcu_core: ResourceName = "enflame.com/gcu-core"
    resource_name_vgcu: ResourceName = "enflame.com/vgcu"
    resource_name_vgcu_percentage: ResourceName = "enflame.com/vgcu-percentage"

    @property
    def drs_count_name(self) -> str:
        """The DRS count resource, as HAMi resolves it: ``resourceNameDRSGCU`` when the file sets
        it, else ``resourceNameVGCU`` when the file sets that (HAMi's chart does: its legacy vGCU
        pods then ask for DRS slices), else ``enflame.com/drs-gcu``."""
        given = self.model_fields_set
        if "resource_name_vgcu" in given and "resource_name_drs_gcu" not in given:
            return self.resource_name_vgcu
        return self.resource_name_drs_gcu
