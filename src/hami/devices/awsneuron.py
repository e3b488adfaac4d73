"""AWS Neuron (HAMi CommonWord ``AWSNeuron``): whole devices (``aws.amazon.com/neuron``) or NeuronCores
(``aws.amazon.com/neuroncore``).

Inventory from the node's capacity (HAMi): ``neuron`` devices ``<node>-AWSNeuron-<i>``, each with
``neuroncore`` / ``neuron`` cores as slots and the bitmask of those cores as its compute
(``devcore`` 3 for two cores); the instance type (label ``node.kubernetes.io/instance-type``) rides
on the cards. Requests: ``neuron: n`` takes n whole devices; ``neuroncore: 1`` one core,
``neuroncore: n`` (n >= 2) n/2 devices with two cores each. A placement takes the lowest free core
bits of its device. Several devices must be contiguous idle devices: on ``inf*`` instances any run,
elsewhere runs of 1, 4, 8 or 16 aligned to their size (HAMi's ring/alignment rule). Filters:
``aws.amazon.com/use-neuron-uuid`` / ``nouse-neuron-uuid``. Decision:
``hami.io/aws-neuron-devices-allocated`` only, ``AWS_NEURON_IDS`` (device indices, or core indices
for core requests), ``NEURON_RESOURCE_TYPE`` for core requests, ``NEURON_ALLOCATED=false``, and
``NEURON_ALLOC_TIME`` (Unix nanoseconds) and ``aws.amazon.com/predicate-node`` at the decision; no
node lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hami.devices.awsneuron_config import AWSNeuronConfig
from hami.devices.base import Card, DeviceRequest, NodeCards, Placement, RequestError
from hami.devices.common import (
    NodeFacts,
    SpecBackend,
    VendorSpec,
    capacity,
    filter_keys,
    int_resource,
    resource_fields,
)
from hami.devices.hooks import CARD_INSUFFICIENT_CORE
from hami.protocol import bodies
from hami.protocol.pod import ContainerDevice
from hami.scheduling.policy import CardPolicy

VENDOR = "AWSNeuron"
WHOLE = "device"
CORES = "cores"
IDS_KEY = "AWS_NEURON_IDS"
RESOURCE_TYPE_KEY = "NEURON_RESOURCE_TYPE"
ALLOCATED_FLAG_KEY = "NEURON_ALLOCATED"
ALLOC_TIME_KEY = "NEURON_ALLOC_TIME"
PREDICATE_NODE_KEY = "aws.amazon.com/predicate-node"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
#: device counts that may take aligned runs outside ``inf*`` instances (HAMi)
ALIGNED_RUNS = (1, 4, 8, 16)


class InstanceType(NodeFacts):
    """A Neuron card's payload: the node's instance type (immutable; placements leave it alone)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


@dataclass(frozen=True, slots=True)
class CoreSlice:
    """A placement's payload: the device index and the core indices it takes."""

    device: int
    cores: tuple[int, ...]


def _bits(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


class AWSNeuronBackend(SpecBackend):
    config_type = AWSNeuronConfig

    def make_spec(self, config: AWSNeuronConfig) -> VendorSpec:
        allocated = "hami.io/aws-neuron-devices-allocated"
        return VendorSpec(
            vendor=VENDOR,
            **resource_fields(config),
            to_allocate_key=allocated,
            allocated_key=allocated,
            lock=None,
            **filter_keys("aws.amazon.com", uuid_word="neuron-uuid"),
            write_to_allocate=False,
        )

    @property
    def decision_keys(self) -> tuple[str, ...]:
        return (
            self.spec.allocated_key,
            IDS_KEY,
            RESOURCE_TYPE_KEY,
            ALLOCATED_FLAG_KEY,
            ALLOC_TIME_KEY,
            PREDICATE_NODE_KEY,
        )

    def parse_container(self, container: Mapping[str, Any]) -> DeviceRequest | None:
        s = self.spec
        cname = str(container.get("name", "?"))
        devices = int_resource(container, cname, s.count_name)
        if devices is not None:
            return DeviceRequest(vendor=VENDOR, count=devices, payload=WHOLE) if devices else None
        cores = int_resource(container, cname, s.core_name)
        if not cores:
            return None
        if cores > 1 and cores % 2:
            raise RequestError(
                container=cname,
                resource=s.core_name,
                reason=f"{cores}: more than one core must be an even number",
            )
        return DeviceRequest(vendor=VENDOR, count=max(1, cores // 2), cores=min(cores, 2), payload=CORES)

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        devices = capacity(node, self.spec.count_name)
        if devices == 0:
            return None
        per_device = max(1, capacity(node, self.spec.core_name) // devices)
        labels = bodies.labels(node)
        return self.capacity_cards(
            node,
            devices,
            type=VENDOR,
            count=per_device,
            mem=0,
            cores=(1 << per_device) - 1,
            payload=InstanceType(str(labels.get(INSTANCE_TYPE_LABEL, ""))),
        )

    # --- hook: Sizing (core bitmasks) ----------------------------------------------------------
    def _need(self, card: Card, request: DeviceRequest) -> int:
        return len(_bits(card.totalcores)) if request.payload == WHOLE or request.count > 1 else request.cores

    def fits(self, card: Card, request: DeviceRequest) -> str | None:
        free = len(_bits(card.totalcores & ~card.usedcores))
        return CARD_INSUFFICIENT_CORE if free < self._need(card, request) else None

    def size(self, card: Card, request: DeviceRequest, container_index: int, device_index: int) -> Placement:
        take = _bits(card.totalcores & ~card.usedcores)[: self._need(card, request)]
        mask = sum(1 << b for b in take)
        per_device = len(_bits(card.totalcores))
        slice_ = CoreSlice(
            device=card.index,
            cores=() if request.payload == WHOLE else tuple(card.index * per_device + b for b in take),
        )
        return Placement(
            device=ContainerDevice(uuid=card.uuid, type=VENDOR, usedmem=card.totalmem, usedcores=mask),
            payload=slice_,
        )

    # --- hook: CardChoice (contiguous idle devices) --------------------------------------------
    def choose_cards(
        self, ordered: list[Card], need: int, policy: CardPolicy, pair_scores: Mapping[str, Mapping[str, int]]
    ) -> list[Card]:
        if need <= 1:
            return ordered
        idle = {c.index: c for c in ordered if c.used == 0}
        if not idle:
            return []
        payload = ordered[0].payload
        ring = isinstance(payload, InstanceType) and "inf" in payload.name.lower()
        if not ring and need not in ALIGNED_RUNS:
            return []
        top = max(idle) + 1
        step = 1 if ring else need
        for start in range(0, top, step):
            run = [idle.get(i) for i in range(start, start + need)]
            if all(c is not None for c in run):
                return [c for c in run if c is not None]
        return []

    # --- decision ------------------------------------------------------------------------------
    def decision_annotations(self, containers: Sequence[Sequence[Placement]]) -> dict[str, str]:
        out = super().decision_annotations(containers)
        ids: list[int] = []
        by_core = False
        for c in containers:
            for p in c:
                sl = p.payload
                if not isinstance(sl, CoreSlice):
                    continue
                if sl.cores:
                    by_core = True
                    ids += sl.cores
                else:
                    ids.append(sl.device)
        if ids:
            out[IDS_KEY] = ",".join(map(str, ids))
            out[ALLOCATED_FLAG_KEY] = "false"
            if by_core:
                out[RESOURCE_TYPE_KEY] = self.spec.core_name
        return out

    def placed_annotations(
        self, pod: Mapping[str, Any], containers: Sequence[Sequence[Placement]], node: str, now_ns: int
    ) -> dict[str, str]:
        """HAMi writes the time (ns) and the node beside ``AWS_NEURON_IDS``, at the decision."""
        if not any(isinstance(p.payload, CoreSlice) for c in containers for p in c):
            return {}
        return {ALLOC_TIME_KEY: str(now_ns), PREDICATE_NODE_KEY: node}
