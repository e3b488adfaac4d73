"""``vastai:`` — the Vastai section of ``device-config.yaml``, next to its backend
(:mod:`hami.devices.vastai`); composed into :class:`hami.config.DeviceConfig`."""

from __future__ import annotations

from hami.config._base import SectionModel
from hami.config._types import ResourceName

__all__ = ["VastaiConfig"]


class VastaiConfig(SectionModel):
    """``vastai:`` — whole devices."""

    resource_count_name: ResourceName = "vastaitech.com/va"
