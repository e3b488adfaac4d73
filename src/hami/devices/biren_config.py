"""``biren:`` — the Biren section of ``device-config.yaml``, next to its backend
(:mod:`hami.devices.biren`); composed into :class:`hami.config.DeviceConfig`."""

from __future__ import annotations

from hami.config._base import SectionModel
from hami.config._types import ResourceName

__all__ = ["BirenConfig"]


class BirenConfig(SectionModel):
    """``biren:`` — whole devices."""

    resource_count_name: ResourceName = "birentech.com/gpu"
