"""MIG-capable cards as partitionable DRA devices (`DRAPartitionableDevices`, alpha in 1.34).

A MIG-capable card whose MIG profiles are known (the device source's profiles, filtered by the
node's `migProfileAllowlist`) publishes one counter set, `gpu-<index>-counters`, in the node's
ResourceSlice, in the shape NVIDIA's DRA driver uses: one counter `memory-slice-<k>` (value 1) per
memory slice of the card and `compute-slices` (the card's compute slices, the largest profile's
slice count). Each profile placement is a device `gpu-<index>-mig-<profile>-<start>` consuming the
memory slices its placement spans and its profile's compute slices; the whole card (`gpu-<index>`)
consumes every counter. So kube-scheduler never hands out two overlapping MIG placements, nor a MIG
placement beside a claim that holds the card whole or a share of it in the same allocation pass
(see docs/dra.md for what kube-scheduler v1.34 does across passes).

Guarantees: pure and deterministic (same card, same devices, in profile then placement order);
`MAX_SHARED_COUNTERS` (the API's limit for one slice) is never exceeded: cards past it are
published whole only (`partitioned_indexes` says which cards are partitioned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hami.deviceplugin.settings import PhysicalDevice
from hami.deviceplugin.sources.base import MigPlacement, SourceMigProfile
from hami.protocol import keys
from hami.protocol.quantity import mib_quantity

#: ResourceSlice.spec.sharedCounters may hold at most this many counters over all sets (v1).
MAX_SHARED_COUNTERS = 32
COMPUTE_SLICES = "compute-slices"


@dataclass(frozen=True)
class MigDevice:
    """One MIG profile placement of a card, as a DRA device."""

    name: str
    card: PhysicalDevice
    profile: SourceMigProfile
    placement: MigPlacement


def counter_set_name(index: int) -> str:
    return f"gpu-{index}-counters"


def memory_slice(k: int) -> str:
    return f"memory-slice-{k}"


def mig_device_name(index: int, profile: str, start: int) -> str:
    """`gpu-0-mig-1g5gb-0`: a DNS label (a profile's dots dropped)."""
    return f"gpu-{index}-mig-{profile.replace('.', '').lower()}-{start}"


def geometry(dev: PhysicalDevice) -> tuple[int, int]:
    """(memory slices, compute slices) of a MIG-capable card; (0, 0) when it has no profiles."""
    memory = max((p.start + p.size for prof in dev.mig_profiles for p in prof.placements), default=0)
    compute = max((prof.slice_count for prof in dev.mig_profiles), default=0)
    return memory, compute


def partitionable(dev: PhysicalDevice) -> bool:
    return dev.card.mig_capable and all(geometry(dev))


def partitioned_indexes(devices: Sequence[PhysicalDevice]) -> set[int]:
    """Indexes of the healthy MIG-capable cards published with MIG devices: in index order while
    their counters fit in one slice."""
    out: set[int] = set()
    used = 0
    for dev in sorted(devices, key=lambda d: d.card.index):
        if not dev.healthy or not partitionable(dev):
            continue
        memory, _ = geometry(dev)
        if used + memory + 1 > MAX_SHARED_COUNTERS:
            break
        used += memory + 1
        out.add(dev.card.index)
    return out


def counter_set(dev: PhysicalDevice) -> dict[str, Any]:
    memory, compute = geometry(dev)
    counters = {memory_slice(k): {"value": "1"} for k in range(memory)}
    counters[COMPUTE_SLICES] = {"value": str(compute)}
    return {"name": counter_set_name(dev.card.index), "counters": counters}


def whole_card_consumption(dev: PhysicalDevice) -> list[dict[str, Any]]:
    """What the whole-card device consumes: all of the card's counters."""
    return [{"counterSet": counter_set_name(dev.card.index), "counters": counter_set(dev)["counters"]}]


def mig_devices(dev: PhysicalDevice) -> list[MigDevice]:
    """Every profile placement of a partitionable card."""
    return [
        MigDevice(mig_device_name(dev.card.index, prof.name, pl.start), dev, prof, pl)
        for prof in dev.mig_profiles
        for pl in prof.placements
    ]


def mig_slice_device(mig: MigDevice, attributes: dict[str, Any]) -> dict[str, Any]:
    """A MIG placement as a DRA device: the card's `attributes` with `type: mig` and the profile,
    fixed `memory` (MiB, canonical quantity) and `cores` (percent of the card) capacities, and its counters."""
    consumed = {
        memory_slice(k): {"value": "1"}
        for k in range(mig.placement.start, mig.placement.start + mig.placement.size)
    }
    consumed[COMPUTE_SLICES] = {"value": str(mig.profile.slice_count)}
    return {
        "name": mig.name,
        "attributes": {
            **attributes,
            keys.DRA_ATTR_TYPE: {"string": keys.DRA_TYPE_MIG},
            keys.DRA_ATTR_MIG_PROFILE: {"string": mig.profile.name},
            keys.DRA_ATTR_MIG_START: {"int": mig.placement.start},
            keys.DRA_ATTR_MIG_SIZE: {"int": mig.placement.size},
        },
        "capacity": {
            keys.DRA_CAPACITY_MEMORY: {"value": mib_quantity(mig.profile.memory_mb)},
            keys.DRA_CAPACITY_CORES: {"value": str(mig.profile.core)},
        },
        "consumesCounters": [{"counterSet": counter_set_name(mig.card.card.index), "counters": consumed}],
    }
