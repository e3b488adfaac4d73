"""Vendor backends behind one small protocol (:mod:`hami.devices.base`), optional hooks
(:mod:`hami.devices.hooks`) and their registry. Each vendor's config section lives next to its
backend (``nvidia_config``) and :class:`hami.config.DeviceConfig` composes them."""

# hami.config composes the vendor sections defined here: initialise it first, whichever package a
# caller imports first, so that neither sees the other half-built
import hami.config  # noqa: F401
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
