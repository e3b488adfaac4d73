"""Vendor backends behind one small protocol (:mod:`hami.devices.base`) and their registry."""

from hami.devices.base import (
    Card,
    CardSelector,
    DeviceBackend,
    DeviceRequest,
    NodeCards,
    Placement,
    RequestError,
)
from hami.devices.registry import BackendRegistry, default_registry

__all__ = [
    "BackendRegistry",
    "Card",
    "CardSelector",
    "DeviceBackend",
    "DeviceRequest",
    "NodeCards",
    "Placement",
    "RequestError",
    "default_registry",
]
