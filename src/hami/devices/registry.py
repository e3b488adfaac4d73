"""The backend registry: which vendors this deployment handles, looked up by vendor key or resource."""

from __future__ import annotations

from collections.abc import Iterator

from hami.config import DeviceConfig
from hami.devices.base import DeviceBackend


class BackendRegistry:
    """An ordered set of backends. Order is registration order (decisions iterate it deterministically)."""

    def __init__(self, backends: list[DeviceBackend] | None = None) -> None:
        self._by_vendor: dict[str, DeviceBackend] = {}
        for b in backends or []:
            self.register(b)

    def register(self, backend: DeviceBackend) -> None:
        if backend.vendor in self._by_vendor:
            raise ValueError(f"backend for vendor {backend.vendor!r} registered twice")
        self._by_vendor[backend.vendor] = backend

    def get(self, vendor: str) -> DeviceBackend:
        return self._by_vendor[vendor]

    def __iter__(self) -> Iterator[DeviceBackend]:
        return iter(self._by_vendor.values())

    def __len__(self) -> int:
        return len(self._by_vendor)

    def resource_names(self) -> list[str]:
        """Every managed resource name, for the extender's ``managedResources``."""
        return [name for b in self for name in b.resource_names]


def default_registry(config: DeviceConfig | None = None) -> BackendRegistry:
    """The registry for a device config: NVIDIA today; other vendors plug in here."""
    from hami.devices.nvidia import NvidiaBackend

    cfg = config if config is not None else DeviceConfig.default()
    return BackendRegistry([NvidiaBackend(cfg.nvidia)])
