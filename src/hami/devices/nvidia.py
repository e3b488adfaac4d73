"""The NVIDIA backend: ``nvidia.com/*`` resources, ``hami.io/node-nvidia-register``, HAMi's pod keys.

Requests follow HAMi (limits before requests): ``nvidia.com/gpu`` count, ``gpumem`` MiB (times the
configured memory factor), ``gpumem-percentage``, ``gpucores``, ``priority``. When neither memory nor
percentage is given the request is ``defaultMemory`` or, failing that, the whole card; a whole-card
request without ``gpucores`` gets 100 cores (exclusive), as HAMi's webhook defaults it. Unlike HAMi,
out-of-range values are rejected instead of clamped.

Hooks (:mod:`hami.devices.hooks`): MIG lives here, in the card payload (:class:`MigSlices`: the
card's profiles and the slices in use) and the placement payload (a :class:`MigAllocation`).
A MIG card takes the smallest profile with enough memory that has a free placement (``Sizing``),
holds as many instances of one request as it has free slots (``MultiSlice``), and the instance
lives as long as the pod. Admission (``Admission``) adds HAMi's webhook defaults: the GPU count,
exclusive cores for whole cards, ``CUDA_TASK_PRIORITY``, ``GPU_CORE_UTILIZATION_POLICY``,
``NVIDIA_VISIBLE_DEVICES=none`` on GPU-less containers and the runtime class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self, cast

from hami.devices.base import (
    Card,
    CardSelector,
    DeviceRequest,
    NodeCards,
    Placement,
    RequestError,
    split_list,
)
from hami.devices.common import INT32_MAX as _INT32_MAX
from hami.devices.common import card_fields, plugin_gone, usable_devices
from hami.devices.common import int_resource as _int_resource
from hami.devices.hooks import AdmissionOutcome, ContainerEditor, QuotaNames
from hami.devices.nvidia_config import NvidiaConfig
from hami.protocol import bodies, keys
from hami.protocol.node import MigProfile, decode_node_devices, decode_pair_scores
from hami.protocol.nodelock import HAMI_NODE_LOCK, NodeLockCodec
from hami.protocol.pod import (
    ContainerDevice,
    MigAllocation,
    decode_mig_allocations,
    decode_pod_devices,
    encode_mig_allocations,
    encode_pod_devices,
)

CARD_MIG_INFEASIBLE = "CardMigTopologyInfeasible"
# NVIDIA_VISIBLE_DEVICES values that give a container no GPU (nvidia-container-toolkit).
_NO_GPU_VISIBLE_DEVICES = frozenset({"none", "void"})


# ------------------------------------------------------------------------------------- MIG payloads


class MigSlices:
    """An NVIDIA card's payload: the MIG profiles it hosts and the slice spans ``(start, size)`` in use."""

    __slots__ = ("in_use", "profiles")

    def __init__(self, profiles: tuple[MigProfile, ...] = (), in_use: list[tuple[int, int]] | None = None):
        self.profiles = profiles
        self.in_use: list[tuple[int, int]] = in_use if in_use is not None else []

    def copy(self) -> Self:
        return type(self)(self.profiles, list(self.in_use))

    def add(self, placement_payload: Any) -> None:
        if isinstance(placement_payload, MigAllocation):
            self.in_use.append((placement_payload.placement_start, placement_payload.placement_size))

    def remove(self, placement_payload: Any) -> None:
        if isinstance(placement_payload, MigAllocation):
            span = (placement_payload.placement_start, placement_payload.placement_size)
            if span in self.in_use:
                self.in_use.remove(span)

    def choice(self, mem: int) -> tuple[MigProfile, int] | None:
        """The smallest profile with enough memory that has a free placement, and that placement's start."""
        profiles = sorted(self.profiles, key=lambda p: (p.memory_mb, p.slice_count, p.name))
        for prof in profiles:
            if prof.memory_mb < mem:
                continue
            placements = sorted(
                prof.placements, key=lambda pl: pl.start, reverse=prof.name.startswith(("1g.", "3g."))
            )
            for pl in placements:
                end = pl.start + pl.size
                if all(end <= s or pl.start >= s + z for s, z in self.in_use):
                    return prof, pl.start
        return None


class NvidiaCard(Card):
    """An NVIDIA card; its payload is a :class:`MigSlices` (node registrations give one to MIG cards
    only, so other cards copy with no extra allocation; a card built directly always has one)."""

    __slots__ = ()

    def __init__(self, *, mig_profiles: tuple[MigProfile, ...] = (), mig: bool = True, **kw: Any) -> None:
        super().__init__(payload=MigSlices(mig_profiles) if mig else None, **kw)

    @property
    def mig_profiles(self) -> tuple[MigProfile, ...]:
        return self.payload.profiles if isinstance(self.payload, MigSlices) else ()

    @property
    def mig_in_use(self) -> list[tuple[int, int]]:
        return self.payload.in_use if isinstance(self.payload, MigSlices) else []


class NvidiaPlacement(Placement):
    """An NVIDIA placement: its payload is the MIG allocation (None outside MIG)."""

    __slots__ = ()

    def __init__(self, device: ContainerDevice, mig: MigAllocation | None = None) -> None:
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "payload", mig)

    @property
    def mig(self) -> MigAllocation | None:
        m: MigAllocation | None = self.payload
        return m


class NvidiaBackend:
    """NVIDIA GPUs shared through HAMi-core, MIG or MPS."""

    vendor = keys.VENDOR_NVIDIA
    allocated_key = keys.VGPU_DEVICES_ALLOCATED
    to_allocate_key = keys.VGPU_DEVICES_TO_ALLOCATE
    lock_key: str | None = keys.NODE_LOCK
    node_lock: NodeLockCodec = HAMI_NODE_LOCK
    handshake_key = keys.NODE_HANDSHAKE
    register_key = keys.NODE_NVIDIA_REGISTER
    decision_keys = (keys.VGPU_DEVICES_TO_ALLOCATE, keys.VGPU_DEVICES_ALLOCATED, keys.VGPU_MIG_ALLOCATIONS)

    def __init__(self, config: NvidiaConfig | None = None) -> None:
        self.config = config if config is not None else NvidiaConfig()

    @property
    def memory_resource(self) -> str:
        return self.config.resource_memory_name

    @property
    def quota_names(self) -> QuotaNames:
        c = self.config
        return QuotaNames(c.resource_memory_name, c.resource_core_name, c.memory_factor)

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
        annotations = bodies.annotations(node)
        value = annotations.get(self.register_key)
        if not value:
            return None
        # HAMi's NVIDIA health rule: when kubelet lists the count resource but none of it is
        # allocatable, the device plugin is gone (uninstalled, crashed, restarting) and the
        # registration annotation is stale — kubelet would refuse every Allocate there
        if plugin_gone(node, self.config.resource_count_name):
            return None
        # a card registered with no memory (0 MiB, or a scaling that rounds to 0) can hold no
        # slice: scheduling onto it would hand out 0-MiB limits (usable_devices leaves it out)
        devices, rejected = usable_devices(decode_node_devices(value), needs_memory=True)
        cards = tuple(
            NvidiaCard(
                **card_fields(d, self.vendor), mig_profiles=d.mig_profiles, mig=d.mode == keys.MODE_MIG
            )
            for d in devices
        )
        scores_raw = annotations.get(keys.NODE_NVIDIA_SCORE)
        scores = decode_pair_scores(scores_raw) if scores_raw else {}
        return NodeCards(cards=cards, pair_scores=scores, rejected=rejected)

    def selector(self, annotations: Mapping[str, str]) -> CardSelector:
        mode = annotations.get(keys.NVIDIA_VGPU_MODE)
        return CardSelector(
            use_types=split_list(annotations.get(keys.NVIDIA_USE_GPUTYPE), lower=True),
            nouse_types=split_list(annotations.get(keys.NVIDIA_NOUSE_GPUTYPE), lower=True),
            use_uuids=frozenset(split_list(annotations.get(keys.NVIDIA_USE_GPUUUID))),
            nouse_uuids=frozenset(split_list(annotations.get(keys.NVIDIA_NOUSE_GPUUUID))),
            mode=mode.strip() if mode and mode.strip() else None,
            numa_bind=annotations.get(keys.NVIDIA_NUMA_BIND, "").strip().lower() == "true",
        )

    def decision_annotations(self, containers: Sequence[Sequence[Placement]]) -> dict[str, str]:
        encoded = encode_pod_devices([[p.device for p in c] for c in containers])
        out = {self.to_allocate_key: encoded, self.allocated_key: encoded}
        migs = [p.payload for c in containers for p in c if isinstance(p.payload, MigAllocation)]
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
            tuple(NvidiaPlacement(d, migs.get((ci, di))) for di, d in enumerate(container))
            for ci, container in enumerate(pod)
        ]

    # --- hooks: MIG (ModeScoped, Sizing, MultiSlice) ----------------------------------------------
    #: the card-level hooks below see MIG cards only; other cards take the shared defaults
    hooked_modes = frozenset({keys.MODE_MIG})

    def fits(self, card: Card, request: DeviceRequest) -> str | None:
        slices = cast(MigSlices, card.payload)
        return None if slices.choice(request.mem_for(card.totalmem)) else CARD_MIG_INFEASIBLE

    def size(self, card: Card, request: DeviceRequest, container_index: int, device_index: int) -> Placement:
        slices = cast(MigSlices, card.payload)
        choice = slices.choice(request.mem_for(card.totalmem))
        assert choice is not None
        prof, start = choice
        mig = MigAllocation(
            container_index=container_index,
            device_index=device_index,
            gpu_uuid=card.uuid,
            profile=prof.name,
            placement_start=start,
            placement_size=prof.slice_count,
        )
        return NvidiaPlacement(ContainerDevice(card.uuid, request.vendor, prof.memory_mb, prof.core), mig)

    def card_slices(self, card: Card) -> int | None:
        """A MIG card holds one instance per free slot, several of them for one request."""
        return max(1, card.count - card.used)

    # --- hook: Admission -------------------------------------------------------------------------
    def core_limit_off(self) -> bool:
        return self.config.gpu_core_policy == "disable" or self.config.disable_core_limit

    def admit_container(
        self, request: DeviceRequest | None, edit: ContainerEditor, out: AdmissionOutcome
    ) -> None:
        container = edit.container
        name = edit.name
        c = self.config
        if request is None:
            given = [
                n
                for n in (c.resource_memory_name, c.resource_memory_percentage_name, c.resource_core_name)
                if edit.has_resource(n)
            ]
            if given and not edit.has_resource(c.resource_count_name) and c.default_gpu_num == 0:
                out.invalid.append(
                    _denial(
                        name,
                        c.resource_count_name,
                        f"missing: {', '.join(given)} given without a GPU count and defaultGPUNum is 0",
                    )
                )
                return
            if c.overwrite_env and edit.set_env(keys.ENV_VISIBLE_DEVICES, "none"):
                out.warnings.append(
                    f"container {name!r}: {keys.ENV_VISIBLE_DEVICES} set to 'none' (no GPU requested)"
                )
            return
        if not out.opted_out:
            out.denials += _visible_devices_violations(name, container)
        if not edit.has_resource(c.resource_count_name):
            edit.set_limit(c.resource_count_name, str(request.count))
        if (
            not edit.has_resource(c.resource_core_name)
            and request.mem == 0
            and request.mem_percentage == 100
            and request.cores == 100
        ):
            edit.set_limit(c.resource_core_name, "100")  # exclusive whole card (HAMi PR #1354)
        if request.priority is not None and edit.set_env(keys.ENV_TASK_PRIORITY, str(request.priority)):
            out.warnings.append(
                f"container {name!r}: {keys.ENV_TASK_PRIORITY} set from {c.resource_priority_name}"
            )
        if c.gpu_core_policy != "default":
            current = edit.env_value(keys.ENV_CORE_POLICY)
            if not (out.opted_out and current is not None and current.strip().lower() == "disable"):
                edit.set_env(keys.ENV_CORE_POLICY, c.gpu_core_policy)

    def admit_pod(self, spec: Mapping[str, Any], used: bool) -> list[dict[str, Any]]:
        if used and self.config.runtime_class_name and not spec.get("runtimeClassName"):
            return [{"op": "add", "path": "/spec/runtimeClassName", "value": self.config.runtime_class_name}]
        return []


def _denial(container: str, resource: str, reason: str) -> str:
    return str(RequestError(container=container, resource=resource, reason=reason))


def _visible_devices_violations(cname: str, container: Mapping[str, Any]) -> list[str]:
    """Reasons a container that gets GPUs overrides the device plugin's ``NVIDIA_VISIBLE_DEVICES``
    (``all`` or a UUID list would expose cards hami did not allocate to it)."""
    env = container.get("env")
    if not isinstance(env, list):
        return []
    out: list[str] = []
    name = keys.ENV_VISIBLE_DEVICES
    for e in env:
        if not isinstance(e, Mapping) or e.get("name") != name:
            continue
        if e.get("valueFrom") is not None:
            out.append(
                _denial(
                    cname,
                    f"env {name}",
                    "may not come from valueFrom in a container that gets GPUs "
                    "(hami's device plugin sets it to the allocated cards)",
                )
            )
            continue
        raw = e.get("value")
        if not (isinstance(raw, str) and raw in _NO_GPU_VISIBLE_DEVICES):
            shown = raw if isinstance(raw, str) else ""
            out.append(
                _denial(
                    cname,
                    f"env {name}",
                    f"{shown!r} would override the cards hami's device plugin allocates to this "
                    "container (only 'none' or 'void' may be set)",
                )
            )
    return out
