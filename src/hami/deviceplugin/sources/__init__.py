"""Device sources: where the device plugin learns about GPUs (NVML or a fake YAML node)."""

from __future__ import annotations

from hami.deviceplugin.sources.base import (
    APPLICATION_XIDS,
    NVLINK_SCORE,
    DeviceSource,
    DeviceSourceError,
    HealthEvent,
    LinkType,
    MigInstance,
    MigPlacement,
    PairLink,
    SourceCard,
    SourceMigProfile,
    pair_score,
    parse_link_type,
    xid_is_critical,
)
from hami.deviceplugin.sources.fake import FakeSource, FakeSpecError

__all__ = [
    "APPLICATION_XIDS",
    "NVLINK_SCORE",
    "DeviceSource",
    "DeviceSourceError",
    "FakeSource",
    "FakeSpecError",
    "HealthEvent",
    "LinkType",
    "MigInstance",
    "MigPlacement",
    "NvmlSource",
    "PairLink",
    "SourceCard",
    "SourceMigProfile",
    "pair_score",
    "parse_link_type",
    "xid_is_critical",
]


def __getattr__(name: str) -> object:
    # NvmlSource is imported lazily: pynvml is only needed on GPU nodes.
    if name == "NvmlSource":
        from hami.deviceplugin.sources.nvml import NvmlSource

        return NvmlSource
    raise AttributeError(name)
