"""``metax:`` — the Metax section of ``device-config.yaml``, next to its backend
(:mod:`hami.devices.metax`); composed into :class:`hami.config.DeviceConfig`."""

from __future__ import annotations

from hami.config._base import SectionModel
from hami.config._types import Bool, ResourceName

__all__ = ["MetaxConfig"]


class MetaxConfig(SectionModel):
    """``metax:`` — whole GPUs (``resourceCountName``) and sGPU slices (``resourceV*``)."""

    resource_count_name: ResourceName = "metax-tech.com/gpu"
    resource_vcount_name: ResourceName = "metax-tech.com/sgpu"
    resource_vmemory_name: ResourceName = "metax-tech.com/vmemory"
    resource_vcore_name: ResourceName = "metax-tech.com/vcore"
    sgpu_topology_aware: Bool = False
