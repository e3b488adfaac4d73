"""``mthreads:`` — the Mthreads section of ``device-config.yaml``, next to its backend
(:mod:`hami.devices.mthreads`); composed into :class:`hami.config.DeviceConfig`."""

from __future__ import annotations

from pydantic import Field

from hami.config._base import SectionModel
from hami.config._types import PositiveInt, ResourceName

__all__ = ["MthreadsConfig"]


class MthreadsConfig(SectionModel):
    """``mthreads:`` — memory in units of 512 MiB, 16 cores per GPU."""

    resource_count_name: ResourceName = "mthreads.com/vgpu"
    resource_memory_name: ResourceName = "mthreads.com/sgpu-memory"
    resource_core_name: ResourceName = "mthreads.com/sgpu-core"
    # Memory units (512 MiB each) per card model present in the cluster; 96 = MTT S4000 (48 GiB).
    memory_per_card: list[PositiveInt] = Field(default_factory=lambda: [96])
