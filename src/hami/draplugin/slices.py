"""The node's ResourceSlice: one DRA device per healthy card, plus MIG devices and counters of
MIG-capable cards (`partitions`; the contract in docs/dra.md).

Guarantees: pure — the inventory, the topology and the node's identity come in as arguments;
device names, attributes and capacities are exactly the documented contract (`gpu-<index>`,
`productName`/`uuid`/`index`/`numaNode`/`type`/`nvlinkGroup`, consumable `memory` in Mi after
HAMi's memory scaling and `cores` with HAMi's defaults and granularity); an unhealthy card is left
out; the same input always gives the same body, so a publisher can compare specs to skip no-op
updates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hami.deviceplugin.settings import PhysicalDevice
from hami.deviceplugin.sources.base import PairLink
from hami.draplugin import partitions
from hami.protocol import keys
from hami.protocol.dra import RESOURCE_API
from hami.protocol.quantity import mib_quantity

#: ResourceSlice.spec.devices may hold at most this many devices (resource.k8s.io/v1).
MAX_DEVICES_PER_SLICE = 128
DEVICE_TYPE = keys.DRA_TYPE_GPU


def device_name(index: int) -> str:
    """The DRA device name of the card with this index."""
    return f"gpu-{index}"


def slice_name(node_name: str) -> str:
    """The name of the node's ResourceSlice for hami's driver."""
    return f"{node_name}-hami-core-gpu"


def nvlink_groups(uuids_by_index: dict[int, str], links: Iterable[PairLink]) -> dict[str, int]:
    """uuid -> the smallest card index reachable from it over NVLink (itself when it has none)."""
    parent = {u: u for u in uuids_by_index.values()}
    index_of = {u: i for i, u in uuids_by_index.items()}

    def find(u: str) -> str:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for link in links:
        if link.nvlinks > 0 and link.a in parent and link.b in parent:
            ra, rb = find(link.a), find(link.b)
            if ra != rb:
                keep, drop = (ra, rb) if index_of[ra] < index_of[rb] else (rb, ra)
                parent[drop] = keep
    return {u: index_of[find(u)] for u in parent}


def _int(value: int) -> dict[str, int]:
    return {"int": value}


def _str(value: str) -> dict[str, str]:
    return {"string": value}


def consumable_capacity(devmem: int, devcore: int) -> dict[str, Any]:
    """A card's consumable capacities: `memory` in MiB, in Kubernetes' canonical form (a request
    naming none takes the whole card) and `cores` (a request naming none takes 0)."""
    memory = mib_quantity(devmem)  # canonical: the stored slice compares equal (no rewrites)
    return {
        keys.DRA_CAPACITY_MEMORY: {
            "value": memory,
            "requestPolicy": {"default": memory, "validRange": {"min": "1Mi", "step": "1Mi"}},
        },
        keys.DRA_CAPACITY_CORES: {
            "value": str(devcore),
            "requestPolicy": {
                "default": "0",
                "validRange": {"min": "0", "max": str(devcore), "step": "1"},
            },
        },
    }


def card_attributes(dev: PhysicalDevice, nvlink_group: int) -> dict[str, Any]:
    """The attributes of a whole card (MIG devices of the card carry them too, with their `type`)."""
    card = dev.card
    return {
        keys.DRA_ATTR_PRODUCT_NAME: _str(dev.type),
        keys.DRA_ATTR_UUID: _str(card.uuid),
        keys.DRA_ATTR_INDEX: _int(card.index),
        keys.DRA_ATTR_NUMA_NODE: _int(card.numa),
        keys.DRA_ATTR_TYPE: _str(DEVICE_TYPE),
        "nvlinkGroup": _int(nvlink_group),
    }


def slice_device(dev: PhysicalDevice, nvlink_group: int, *, partitioned: bool = False) -> dict[str, Any]:
    """One card as a DRA device with consumable memory and cores; a `partitioned` card's device
    also consumes all of its MIG counters (`partitions`)."""
    out: dict[str, Any] = {
        "name": device_name(dev.card.index),
        "attributes": card_attributes(dev, nvlink_group),
        "capacity": consumable_capacity(dev.devmem, dev.devcore),
        "allowMultipleAllocations": True,
    }
    if partitioned:
        out["consumesCounters"] = partitions.whole_card_consumption(dev)
    return out


def _healthy(devices: Sequence[PhysicalDevice]) -> list[PhysicalDevice]:
    return sorted((d for d in devices if d.healthy), key=lambda d: d.card.index)


def slice_devices(
    devices: Sequence[PhysicalDevice], links: Iterable[PairLink], *, partitioned: bool = True
) -> list[dict[str, Any]]:
    """The healthy cards as DRA devices in index order, then (unless not `partitioned`) the MIG
    devices of the partitioned cards (`partitions.partitioned_indexes`), card by card. Whole cards
    come first: kube-scheduler v1.34 checks a request's capacity against the slice's devices by
    position (docs/dra.md)."""
    groups = nvlink_groups({d.card.index: d.uuid for d in devices}, links)
    healthy = _healthy(devices)
    split = partitions.partitioned_indexes(healthy) if partitioned else set()
    out = [slice_device(d, groups[d.uuid], partitioned=d.card.index in split) for d in healthy]
    for d in healthy:
        if d.card.index in split:
            attrs = card_attributes(d, groups[d.uuid])
            out += [partitions.mig_slice_device(m, attrs) for m in partitions.mig_devices(d)]
    return out


def shared_counters(devices: Sequence[PhysicalDevice]) -> list[dict[str, Any]]:
    """The counter sets of the partitioned cards, in index order ([] when none is)."""
    healthy = _healthy(devices)
    split = partitions.partitioned_indexes(healthy)
    return [partitions.counter_set(d) for d in healthy if d.card.index in split]


def resource_slice(
    node_name: str,
    node_uid: str,
    generation: int,
    devices: list[dict[str, Any]],
    counters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The node's ResourceSlice body: pool = the node name, owned by the Node (deleted with it),
    `sharedCounters` when some card is partitioned. ValueError when the node has more devices than
    one slice holds."""
    if len(devices) > MAX_DEVICES_PER_SLICE:
        raise ValueError(
            f"node {node_name}: {len(devices)} devices, more than the {MAX_DEVICES_PER_SLICE} one ResourceSlice holds"
        )
    return {
        "apiVersion": RESOURCE_API,
        "kind": "ResourceSlice",
        "metadata": {
            "name": slice_name(node_name),
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid, "controller": True}
            ],
        },
        "spec": {
            "driver": keys.DRA_DRIVER,
            "nodeName": node_name,
            "pool": {"name": node_name, "generation": generation, "resourceSliceCount": 1},
            "devices": devices,
            **({"sharedCounters": counters} if counters else {}),
        },
    }


def _class(name: str, device_type: str) -> dict[str, Any]:
    attrs = f'device.attributes["{keys.DRA_DRIVER}"]'
    return {
        "apiVersion": RESOURCE_API,
        "kind": "DeviceClass",
        "metadata": {"name": name},
        "spec": {
            "selectors": [
                {
                    "cel": {
                        "expression": f'device.driver == "{keys.DRA_DRIVER}" && '
                        f'{attrs}.{keys.DRA_ATTR_TYPE} == "{device_type}"'
                    }
                }
            ]
        },
    }


def device_class() -> dict[str, Any]:
    """The DeviceClass claims name to get a card or a share of one (`type: gpu`; the chart
    installs the same object)."""
    return _class(keys.DRA_DEVICE_CLASS, keys.DRA_TYPE_GPU)


def mig_device_class() -> dict[str, Any]:
    """The DeviceClass of MIG devices (`type: mig`; the chart installs the same object)."""
    return _class(keys.DRA_MIG_DEVICE_CLASS, keys.DRA_TYPE_MIG)
