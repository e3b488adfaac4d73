"""Turn a Pod manifest into per-container, per-vendor device requests (init containers first)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hami.devices.base import DeviceBackend, DeviceRequest, RequestError
from hami.devices.registry import BackendRegistry
from hami.protocol import bodies


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    """One container's requests, keyed by vendor (empty when it asks for no managed device)."""

    name: str
    init: bool
    devices: Mapping[str, DeviceRequest]
    #: an init container with ``restartPolicy: Always`` (a native sidecar): it keeps running
    #: beside the app containers, so it is fitted and counted like one
    sidecar: bool = False


@dataclass(frozen=True, slots=True)
class PodRequest:
    """Every container of a pod, init containers first (the order of HAMi's pod device encoding)."""

    containers: tuple[ContainerRequest, ...]
    init_count: int

    @property
    def vendors(self) -> list[str]:
        seen: dict[str, None] = {}
        for c in self.containers:
            for v in c.devices:
                seen[v] = None
        return list(seen)

    @property
    def sidecars(self) -> frozenset[int]:
        return frozenset(i for i, c in enumerate(self.containers) if c.sidecar)

    @property
    def empty(self) -> bool:
        return not any(c.devices for c in self.containers)


def _backends(container: Mapping[str, Any], registry: BackendRegistry) -> Iterable[DeviceBackend]:
    """The backends that may read ``container``: those managing one of its resource names (every
    backend when ``resources`` is malformed, so that the backend's parser names the problem)."""
    resources = container.get("resources")
    if resources is None:
        return ()
    if not isinstance(resources, Mapping):
        return registry
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    if not isinstance(limits, Mapping) or not isinstance(requests, Mapping):
        return registry
    if not requests:
        return registry.backends_for(limits)
    return registry.backends_for(itertools.chain(limits, requests))


def pod_requests(pod: Mapping[str, Any], registry: BackendRegistry) -> PodRequest:
    """Parse every container (a :class:`~hami.devices.hooks.PodScoped` vendor's requests completed
    from the pod's annotations); raises :class:`RequestError` naming the container, resource and reason."""
    spec = bodies.spec(pod)
    annotations = bodies.annotations(pod)
    init = spec.get("initContainers") or []
    app = spec.get("containers") or []
    containers: list[ContainerRequest] = []
    for is_init, group in ((True, init), (False, app)):
        for container in group:
            if not isinstance(container, Mapping):
                raise RequestError(
                    container="?", resource="spec.containers", reason="container must be an object"
                )
            devices: dict[str, DeviceRequest] = {}
            cname = str(container.get("name", "?"))
            for backend in _backends(container, registry):
                req = backend.parse_container(container)
                if req is not None:
                    pod_scoped = registry.hooks(backend.vendor).pod_request
                    devices[backend.vendor] = (
                        req if pod_scoped is None else pod_scoped(req, annotations, cname)
                    )
            containers.append(
                ContainerRequest(
                    name=cname,
                    init=is_init,
                    devices=devices,
                    sidecar=is_init and container.get("restartPolicy") == "Always",
                )
            )
    return PodRequest(containers=tuple(containers), init_count=len(init))


def check_against_largest_card(
    request: PodRequest, largest_mem: Mapping[str, int], registry: BackendRegistry
) -> None:
    """Reject memory larger than any card of the vendor in the cluster (``largest_mem`` by vendor)."""
    for c in request.containers:
        for vendor, req in c.devices.items():
            biggest = largest_mem.get(vendor)
            if biggest is not None and req.mem_percentage is None and req.mem > biggest:
                raise RequestError(
                    container=c.name,
                    resource=registry.get(vendor).memory_resource,
                    reason=f"{req.mem} MiB is more than the largest {vendor} card in the cluster ({biggest} MiB)",
                )


def unmanaged_resources(pod: Mapping[str, Any], registry: BackendRegistry) -> list[str]:
    """Extended resources (``<domain>/<name>``, outside ``kubernetes.io``) the pod's containers ask
    for that no registered backend manages, sorted: what to name when a pod "requests no managed
    device" (e.g. a vendor whose section is not configured)."""
    managed = set(registry.resource_names())
    spec = bodies.spec(pod)
    found: set[str] = set()
    for group in (spec.get("initContainers") or [], spec.get("containers") or []):
        for container in group:
            resources = container.get("resources") if isinstance(container, Mapping) else None
            if not isinstance(resources, Mapping):
                continue
            for part in ("limits", "requests"):
                values = resources.get(part)
                if isinstance(values, Mapping):
                    found.update(
                        str(k)
                        for k in values
                        if "/" in str(k) and not str(k).split("/", 1)[0].endswith("kubernetes.io")
                    )
    return sorted(found - managed)
