"""Readers of DRA objects (`resource.k8s.io/v1`): the devices a ResourceClaim was allocated.

A claim's `status.allocation.devices.results[]` lists one entry per allocated device: the request
it satisfies, the driver, pool and device, and — with consumable capacity (`DRAConsumableCapacity`)
— `consumedCapacity` and `shareID`. `claim_allocations` returns this driver's entries as
`DeviceAllocation` values with hami's units (memory in MiB, cores in percent of a card).
Guarantees: pure; every malformed field raises `ProtocolError` naming the claim, the field path
and the reason; an entry without `consumedCapacity` (a device allocated whole) reads as `None`
capacities, which the caller resolves against the device's own capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hami.protocol import bodies, keys
from hami.protocol.errors import ProtocolError
from hami.protocol.quantity import parse_quantity

#: API group/version of the DRA objects hami reads and writes.
RESOURCE_API = "resource.k8s.io/v1"
_MIB = 1024 * 1024


@dataclass(frozen=True)
class DeviceAllocation:
    """One allocated device of a claim."""

    request: str
    driver: str
    pool: str
    device: str
    #: `consumedCapacity.memory` rounded up to whole MiB; None when the device was allocated whole.
    memory_mib: int | None = None
    #: `consumedCapacity.cores` (100 = a whole card); None when the device was allocated whole.
    cores: int | None = None
    #: Distinguishes several allocations of one shareable device (`shareID`); None otherwise.
    share_id: str | None = None


def claim_ref(claim: bodies.Body) -> str:
    """`namespace/name (uid)` of a claim, for messages."""
    return f"{bodies.object_key(claim)} ({bodies.uid(claim) or '?'})"


def _capacity(value: Any, where: str, *, to_mib: bool) -> int:
    try:
        q = parse_quantity(value)
    except ProtocolError as e:
        raise ProtocolError(f"{where}: {e}") from None
    if q < 0:
        raise ProtocolError(f"{where}: must not be negative, got {value!r}")
    if to_mib:
        q = q / _MIB
    return math.ceil(q)


def claim_allocations(claim: bodies.Body, driver: str = keys.DRA_DRIVER) -> list[DeviceAllocation]:
    """This driver's allocated devices of `claim`, in result order; ProtocolError when the claim is
    not allocated or a result is malformed."""
    ref = claim_ref(claim)
    allocation = bodies.status(claim).get("allocation")
    if not isinstance(allocation, dict):
        raise ProtocolError(f"claim {ref}: status.allocation: the claim is not allocated")
    results = (allocation.get("devices") or {}).get("results") or []
    if not isinstance(results, list):
        raise ProtocolError(f"claim {ref}: status.allocation.devices.results: expected a list")
    out: list[DeviceAllocation] = []
    for i, r in enumerate(results):
        where = f"claim {ref}: status.allocation.devices.results[{i}]"
        if not isinstance(r, dict):
            raise ProtocolError(f"{where}: expected an object, got {r!r}")
        if r.get("driver") != driver:
            continue
        fields: dict[str, str] = {}
        for k in ("request", "pool", "device"):
            v = r.get(k)
            if not isinstance(v, str) or not v:
                raise ProtocolError(f"{where}.{k}: expected a non-empty string, got {v!r}")
            fields[k] = v
        consumed = r.get("consumedCapacity")
        if consumed is not None and not isinstance(consumed, dict):
            raise ProtocolError(f"{where}.consumedCapacity: expected a map, got {consumed!r}")
        consumed = consumed or {}
        memory = consumed.get(keys.DRA_CAPACITY_MEMORY)
        cores = consumed.get(keys.DRA_CAPACITY_CORES)
        share_id = r.get("shareID")
        out.append(
            DeviceAllocation(
                request=fields["request"],
                driver=driver,
                pool=fields["pool"],
                device=fields["device"],
                memory_mib=None
                if memory is None
                else _capacity(memory, f"{where}.consumedCapacity.memory", to_mib=True),
                cores=None
                if cores is None
                else _capacity(cores, f"{where}.consumedCapacity.cores", to_mib=False),
                share_id=str(share_id) if share_id else None,
            )
        )
    return out
