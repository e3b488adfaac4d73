"""The NVIDIA backend: ``nvidia.com/*`` resources, ``hami.io/node-nvidia-register``, HAMi's pod keys.

Requests follow HAMi (limits before requests): ``nvidia.com/gpu`` count, ``gpumem`` MiB (times the
configured memory factor), ``gpumem-percentage``, ``gpucores``, ``priority``. When neither memory nor
percentage is given the request is ``defaultMemory`` or, failing that, the whole card; a whole-card
request without ``gpucores`` gets 100 cores (exclusive), as HAMi's webhook defaults it. Unlike HAMi,
out-of-range values are rejected instead of clamped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hami.config import NvidiaConfig
from hami.devices.base import (
    Card,
    CardSelector,
    DeviceRequest,
    NodeCards,
    Placement,
    RequestError,
    split_list,
)
from hami.protocol import keys
from hami.protocol.errors import ProtocolError
from hami.protocol.node import decode_node_devices, decode_pair_scores
from hami.protocol.pod import (
    decode_mig_allocations,
    decode_pod_devices,
    encode_mig_allocations,
    encode_pod_devices,
)
from hami.protocol.quantity import parse_int_quantity

_INT32_MAX = 2**31 - 1


def _resource(container: Mapping[str, Any], cname: str, name: str) -> Any:
    resources = container.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise RequestError(container=cname, resource="resources", reason="must be an object")
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    for part, value in (("limits", limits), ("requests", requests)):
        if not isinstance(value, Mapping):
            raise RequestError(container=cname, resource=f"resources.{part}", reason="must be an object")
    if name in limits:
        return limits[name]
    return requests.get(name)


def _int_resource(container: Mapping[str, Any], cname: str, name: str) -> int | None:
    raw = _resource(container, cname, name)
    if raw is None:
        return None
    try:
        value = parse_int_quantity(raw, field=name)
    except ProtocolError as exc:
        raise RequestError(
            container=cname, resource=name, reason=str(exc).removeprefix(f"{name}: ")
        ) from None
    if value < 0:
        raise RequestError(container=cname, resource=name, reason=f"{raw!r} must not be negative")
    if value > _INT32_MAX:
        raise RequestError(container=cname, resource=name, reason=f"{raw!r} is too large")
    return value


class NvidiaBackend:
    """NVIDIA GPUs shared through HAMi-core, MIG or MPS."""

    vendor = keys.VENDOR_NVIDIA
    allocated_key = keys.VGPU_DEVICES_ALLOCATED
    to_allocate_key = keys.VGPU_DEVICES_TO_ALLOCATE
    lock_key: str | None = keys.NODE_LOCK
    register_key = keys.NODE_NVIDIA_REGISTER
    decision_keys = (keys.VGPU_DEVICES_TO_ALLOCATE, keys.VGPU_DEVICES_ALLOCATED, keys.VGPU_MIG_ALLOCATIONS)

    def __init__(self, config: NvidiaConfig | None = None) -> None:
        self.config = config if config is not None else NvidiaConfig()

    @property
    def memory_resource(self) -> str:
        return self.config.resource_memory_name

    @property
    def resource_names(self) -> tuple[str, ...]:
        c = self.config
        return (
            c.resource_count_name,
            c.resource_memory_name,
            c.resource_memory_percentage_name,
            c.resource_core_name,
            c.resource_priority_name,
        )

    def parse_container(self, container: Mapping[str, Any]) -> DeviceRequest | None:
        c = self.config
        cname = str(container.get("name", "?"))
        count = _int_resource(container, cname, c.resource_count_name)
        mem = _int_resource(container, cname, c.resource_memory_name)
        pct = _int_resource(container, cname, c.resource_memory_percentage_name)
        cores = _int_resource(container, cname, c.resource_core_name)
        priority = _int_resource(container, cname, c.resource_priority_name)
        if count is None:
            if mem is None and pct is None and cores is None:
                return None
            count = c.default_gpu_num  # HAMi's webhook adds the count when only memory/cores are given
        if count == 0:
            return None
        if pct is not None and pct > 100:
            raise RequestError(
                container=cname,
                resource=c.resource_memory_percentage_name,
                reason=f"{pct} is more than 100 percent",
            )
        if cores is not None and cores > 100:
            raise RequestError(
                container=cname,
                resource=c.resource_core_name,
                reason=f"{cores} is more than 100 percent of a card",
            )
        if pct == 0:
            pct = None
        if mem is not None and mem * c.memory_factor > _INT32_MAX:
            raise RequestError(container=cname, resource=c.resource_memory_name, reason=f"{mem} is too large")
        mem_mib = (mem or 0) * c.memory_factor
        if mem_mib and pct is not None:
            pct = None  # an explicit amount wins over a percentage, as in HAMi
        whole_card = False
        if mem_mib == 0 and pct is None:
            if c.default_memory:
                mem_mib = c.default_memory
            else:
                pct = 100
                whole_card = True
        elif pct == 100 and not mem_mib:
            whole_card = True
        if cores is None:
            cores = 100 if whole_card else c.default_cores
        return DeviceRequest(
            vendor=self.vendor, count=count, mem=mem_mib, mem_percentage=pct, cores=cores, priority=priority
        )

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        value = annotations.get(self.register_key)
        if not value:
            return None
        # HAMi's NVIDIA health rule: when kubelet lists the count resource but none of it is
        # allocatable, the device plugin is gone (uninstalled, crashed, restarting) and the
        # registration annotation is stale — kubelet would refuse every Allocate there
        allocatable = ((node.get("status") or {}).get("allocatable") or {}).get(
            self.config.resource_count_name
        )
        if allocatable is not None and str(allocatable).strip() == "0":
            return None
        devices = decode_node_devices(value)
        cards = tuple(
            Card(
                uuid=d.id,
                vendor=self.vendor,
                type=d.type,
                count=d.count,
                totalmem=d.devmem,
                totalcores=d.devcore,
                index=d.index,
                numa=d.numa,
                mode=d.mode or keys.MODE_HAMI_CORE,
                health=d.health,
                mig_profiles=d.mig_profiles,
            )
            for d in devices
        )
        scores_raw = annotations.get(keys.NODE_NVIDIA_SCORE)
        scores = decode_pair_scores(scores_raw) if scores_raw else {}
        return NodeCards(cards=cards, pair_scores=scores)

    def selector(self, annotations: Mapping[str, str]) -> CardSelector:
        mode = annotations.get(keys.NVIDIA_VGPU_MODE)
        return CardSelector(
            use_types=split_list(annotations.get(keys.NVIDIA_USE_GPUTYPE), lower=True),
            nouse_types=split_list(annotations.get(keys.NVIDIA_NOUSE_GPUTYPE), lower=True),
            use_uuids=frozenset(split_list(annotations.get(keys.NVIDIA_USE_GPUUUID))),
            nouse_uuids=frozenset(split_list(annotations.get(keys.NVIDIA_NOUSE_GPUUUID))),
            mode=mode.strip() if mode and mode.strip() else None,
        )

    def decision_annotations(self, containers: Sequence[Sequence[Placement]]) -> dict[str, str]:
        encoded = encode_pod_devices([[p.device for p in c] for c in containers])
        out = {self.to_allocate_key: encoded, self.allocated_key: encoded}
        migs = [p.mig for c in containers for p in c if p.mig is not None]
        if migs:
            out[keys.VGPU_MIG_ALLOCATIONS] = encode_mig_allocations(migs)
        return out

    def decode_allocation(self, annotations: Mapping[str, str]) -> list[tuple[Placement, ...]] | None:
        value = annotations.get(self.allocated_key)
        if not value:
            return None
        pod = decode_pod_devices(value)
        mig_value = annotations.get(keys.VGPU_MIG_ALLOCATIONS)
        migs = (
            {(m.container_index, m.device_index): m for m in decode_mig_allocations(mig_value)}
            if mig_value
            else {}
        )
        return [
            tuple(Placement(device=d, mig=migs.get((ci, di))) for di, d in enumerate(container))
            for ci, container in enumerate(pod)
        ]
