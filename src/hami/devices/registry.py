"""The backend registry: which vendors this deployment handles, looked up by vendor key or resource.

Guarantees: each backend's optional hooks are resolved once, when it is registered
(:func:`hami.devices.hooks.resolve_hooks`), so the scheduling core only reads plain callables.
A registry is built from the config sections present (:func:`registry_from_sections`): each section
with a backend factory gives one backend, a list-valued section one backend per entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from hami.devices.base import DeviceBackend
from hami.devices.hooks import Admission, CardUse, PodAdmission, VendorHooks, resolve_hooks
from hami.protocol.nodelock import NodeLockCodec

if TYPE_CHECKING:
    from hami.config import DeviceConfig
    from hami.devices.base import Card

#: builds the backend(s) of one config section (or of one entry of a list-valued section)
BackendFactory = Callable[[Any], "DeviceBackend | Sequence[DeviceBackend]"]


class BackendRegistry:
    """An ordered set of backends. Order is registration order (decisions iterate it deterministically)."""

    def __init__(self, backends: list[DeviceBackend] | None = None) -> None:
        self._by_vendor: dict[str, DeviceBackend] = {}
        self._hooks: dict[str, VendorHooks] = {}
        self._by_resource: dict[str, list[DeviceBackend]] = {}
        self._order: dict[str, int] = {}
        for b in backends or []:
            self.register(b)

    def register(self, backend: DeviceBackend) -> None:
        if backend.vendor in self._by_vendor:
            raise ValueError(f"backend for vendor {backend.vendor!r} registered twice")
        self._by_vendor[backend.vendor] = backend
        self._hooks[backend.vendor] = resolve_hooks(backend)
        for name in backend.resource_names:
            self._by_resource.setdefault(name, []).append(backend)
        self._order[backend.vendor] = len(self._order)

    def backends_for(self, resource_names: Iterable[str]) -> list[DeviceBackend]:
        """The backends managing any of ``resource_names``, in registration order (a container's
        request is parsed by these only, so more registered vendors cost nothing per pod)."""
        found: dict[str, DeviceBackend] = {}
        for name in resource_names:
            for b in self._by_resource.get(name, ()):
                found[b.vendor] = b
        if len(found) < 2:
            return list(found.values())
        return sorted(found.values(), key=lambda b: self._order[b.vendor])

    def get(self, vendor: str) -> DeviceBackend:
        return self._by_vendor[vendor]

    def hooks(self, vendor: str) -> VendorHooks:
        """The vendor's resolved hooks (None fields: the shared default)."""
        return self._hooks[vendor]

    def __iter__(self) -> Iterator[DeviceBackend]:
        return iter(self._by_vendor.values())

    def __len__(self) -> int:
        return len(self._by_vendor)

    def resource_names(self) -> list[str]:
        """Every managed resource name, for the extender's ``managedResources``."""
        return [name for b in self for name in b.resource_names]

    def card_usage(self) -> dict[str, Callable[[Card, CardUse, int], None]]:
        """Per-vendor card usage arithmetic for the ledger."""
        return {v: h.usage for v, h in self._hooks.items()}

    def admissions(self) -> list[tuple[str, Admission]]:
        """``(vendor, hook)`` for every backend with an admission hook, in registration order."""
        return [(v, h.admission) for v, h in self._hooks.items() if h.admission is not None]

    def pod_admissions(self) -> list[tuple[str, PodAdmission]]:
        """``(vendor, hook)`` for every backend with a pod-annotation admission hook, in registration order."""
        return [(v, h.pod_admission) for v, h in self._hooks.items() if h.pod_admission is not None]

    def node_locks(self) -> dict[str, NodeLockCodec]:
        """Per-vendor node-lock codec, for vendors that take a lock."""
        return {v: h.node_lock for v, h in self._hooks.items() if h.node_lock is not None}

    def node_lock(self) -> NodeLockCodec | None:
        """The node lock of the first locking vendor (what a single-lock extender takes)."""
        return next(iter(self.node_locks().values()), None)


def registry_from_sections(
    sections: Mapping[str, Any], factories: Mapping[str, BackendFactory]
) -> BackendRegistry:
    """One backend per section that has a factory (one per entry for a list), in ``factories`` order."""
    backends: list[DeviceBackend] = []
    for name, factory in factories.items():
        if name not in sections:
            continue
        value = sections[name]
        for item in value if isinstance(value, list) else [value]:
            made = factory(item)
            # a factory may give several backends for one section (Kunlun: whole XPUs and vXPUs)
            if isinstance(made, list | tuple):
                backends.extend(made)
            else:
                backends.append(cast(DeviceBackend, made))
    return BackendRegistry(backends)


def default_factories() -> dict[str, BackendFactory]:
    """The built-in backends, by config section (in registration order)."""
    from hami.devices.amd import AMDBackend
    from hami.devices.ascend import ascend_backends
    from hami.devices.awsneuron import AWSNeuronBackend
    from hami.devices.biren import BirenBackend
    from hami.devices.cambricon import CambriconBackend
    from hami.devices.enflame import enflame_backends
    from hami.devices.hygon import HygonBackend
    from hami.devices.iluvatar import IluvatarBackend
    from hami.devices.kunlun import kunlun_backends
    from hami.devices.metax import metax_backends
    from hami.devices.mthreads import MthreadsBackend
    from hami.devices.nvidia import NvidiaBackend
    from hami.devices.vastai import VastaiBackend

    return {
        "nvidia": NvidiaBackend,
        "cambricon": CambriconBackend,
        "hygon": HygonBackend,
        "metax": metax_backends,
        "iluvatars": IluvatarBackend,
        "mthreads": MthreadsBackend,
        "enflame": enflame_backends,
        "kunlun": kunlun_backends,
        "amd": AMDBackend,
        "awsneuron": AWSNeuronBackend,
        "vastai": VastaiBackend,
        "biren": BirenBackend,
        "ascend": ascend_backends,
    }


def section_warnings(config: DeviceConfig, *, source: str = "device-config.yaml") -> list[str]:
    """One warning per configured vendor section that gives no backend (not implemented yet, or an
    empty list), so a section is never silently ignored. Unknown keys are warned about by the parser."""
    factories = default_factories()
    out: list[str] = []
    for name, value in config.sections().items():
        key = config.file_key(name)
        if name not in factories:
            out.append(
                f"{source}: {key}: hami has no backend for this vendor yet; the section is ignored and "
                f"pods asking for its resources are not scheduled by hami (docs/vendors.md)"
            )
        elif isinstance(value, list) and not value:
            out.append(f"{source}: {key}: empty list, no backend registered for this vendor")
    return out


def default_registry(config: DeviceConfig | None = None) -> BackendRegistry:
    """The registry for a device config: the built-in backends whose sections it has."""
    from hami.config import DeviceConfig

    cfg = config if config is not None else DeviceConfig.default()
    return registry_from_sections(cfg.sections(), default_factories())
