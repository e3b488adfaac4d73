"""``kunlun:`` — the Kunlun section of ``device-config.yaml``, next to its backends
(:mod:`hami.devices.kunlun`); composed into :class:`hami.config.DeviceConfig`."""

from __future__ import annotations

from hami.config._base import SectionModel
from hami.config._types import ResourceName

__all__ = ["KunlunConfig"]


class KunlunConfig(SectionModel):
    """``kunlun:`` — whole XPUs and vXPU slices."""

    resource_count_name: ResourceName = "kunlunxin.com/xpu"
    resource_vcount_name: ResourceName = "kunlunxin.com/vxpu"
    resource_vmemory_name: ResourceName = "kunlunxin.com/vxpu-memory"
