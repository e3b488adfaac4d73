"""``cambricon:`` — the Cambricon section of ``device-config.yaml``, next to its backend
(:mod:`hami.devices.cambricon`); composed into :class:`hami.config.DeviceConfig`."""

from __future__ import annotations

from hami.config._base import SectionModel
from hami.config._types import ResourceName

__all__ = ["CambriconConfig"]


class CambriconConfig(SectionModel):
    """``cambricon:`` — MLU (memory in units of 256 MiB, vcore 100 per card)."""

    resource_count_name: ResourceName = "cambricon.com/vmlu"
    resource_memory_name: ResourceName = "cambricon.com/mlu.smlu.vmemory"
    resource_core_name: ResourceName = "cambricon.com/mlu.smlu.vcore"
