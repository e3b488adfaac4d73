"""Metax sGPU's own wire formats (HAMi ``pkg/device/metax/protocol.go``, ``sdevice.go``).

* Node inventory ``metax-tech.com/node-gpu-devices``, written by Metax's device plugin: a JSON list
  of ``{"uuid", "bdf", "model", "totalDevCount", "totalCompute", "totalVRam", "availableDevCount",
  "availableCompute", "availableVRam", "numa", "healthy", "qosPolicy", "linkZone"}`` with Go's
  ``omitempty`` (a missing field is its zero value; unknown fields are ignored).
* The decision as Metax's device plugin reads it, ``metax-tech.com/gpu-devices-allocated``: one
  list per container of ``{"uuid", "compute", "vRam"}`` (zero ``compute``/``vRam`` omitted), e.g.
  ``[[],[{"uuid":"GPU-a","compute":60,"vRam":4096}]]``.
* ``metax-tech.com/vmemory`` quantities: a bare number is GiB (times 1024 MiB), a number with a unit is
  bytes (divided by 1 MiB, rounded down). HAMi decides "has a unit" on the quantity's *canonical* form, so a
  bare ``1000`` (canonically ``1k``) counts as 1000 bytes, as it does in HAMi.

Guarantees: pure; the decoder raises :class:`~hami.protocol.errors.ProtocolError` naming the
annotation and the field; encoders give exactly the bytes Go's ``encoding/json`` gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from hami.protocol.errors import ProtocolError
from hami.protocol.keys import METAX_SGPU_DEVICES
from hami.protocol.node import json_bool, json_device_objects, json_id, json_int, json_str
from hami.protocol.quantity import parse_quantity

__all__ = [
    "SGPUDevice",
    "decode_sgpu_devices",
    "encode_sgpu_allocation",
    "encode_sgpu_devices",
    "vmemory_mib",
]

_MIB = 1024 * 1024
_GIB_IN_MIB = 1024


@dataclass(frozen=True, slots=True)
class SGPUDevice:
    """One card as Metax's device plugin registers it (the fields the scheduler reads)."""

    uuid: str
    total_dev_count: int
    total_compute: int
    total_vram: int
    numa: int = 0
    healthy: bool = False
    qos_policy: str = ""
    link_zone: int = 0
    model: str = ""


def decode_sgpu_devices(value: str) -> list[SGPUDevice]:
    """The cards of a ``metax-tech.com/node-gpu-devices`` value; raises ProtocolError."""
    out: list[SGPUDevice] = []
    seen: dict[str, int] = {}
    located = json_device_objects(value, what=METAX_SGPU_DEVICES, prefix=f"{METAX_SGPU_DEVICES}: ")
    for i, (where, item) in enumerate(located):
        uuid = json_id(item, "uuid", where)
        if uuid in seen:
            raise ProtocolError(f"{where}: duplicate uuid {uuid!r} (also device[{seen[uuid]}])")
        seen[uuid] = i
        healthy = json_bool(item, "healthy", where)
        out.append(
            SGPUDevice(
                uuid=uuid,
                total_dev_count=json_int(item, "totalDevCount", where),
                total_compute=json_int(item, "totalCompute", where),
                total_vram=json_int(item, "totalVRam", where),
                numa=json_int(item, "numa", where),
                healthy=healthy,
                qos_policy=json_str(item, "qosPolicy", where),
                link_zone=json_int(item, "linkZone", where),
                model=json_str(item, "model", where),
            )
        )
    return out


def encode_sgpu_devices(devices: Iterable[SGPUDevice]) -> str:
    """The annotation value Metax's device plugin writes for ``devices`` (Go field order, omitempty)."""
    out = []
    for d in devices:
        fields: dict[str, Any] = {
            "uuid": d.uuid,
            "model": d.model,
            "totalDevCount": d.total_dev_count,
            "totalCompute": d.total_compute,
            "totalVRam": d.total_vram,
            "numa": d.numa,
            "healthy": d.healthy,
            "qosPolicy": d.qos_policy,
            "linkZone": d.link_zone,
        }
        out.append({k: v for k, v in fields.items() if k == "uuid" or v})
    return orjson.dumps(out).decode()


def encode_sgpu_allocation(containers: Sequence[Sequence[tuple[str, int, int]]]) -> str:
    """``metax-tech.com/gpu-devices-allocated`` for ``(uuid, compute, vRam MiB)`` per card, per container."""
    out = []
    for devices in containers:
        row = []
        for uuid, compute, vram in devices:
            entry: dict[str, Any] = {"uuid": uuid}
            if compute:
                entry["compute"] = compute
            if vram:
                entry["vRam"] = vram
            row.append(entry)
        out.append(row)
    return orjson.dumps(out).decode()


def _canonical_has_suffix(value: Decimal, binary: bool) -> bool:
    """Does Kubernetes' canonical form of the integer ``value`` carry a letter (``1k``, ``2Gi``)?

    Binary quantities of at least 1024 print with a power-of-1024 suffix when divisible by 1024;
    anything else prints in decimal SI, with a power-of-1000 suffix when divisible by 1000."""
    n = abs(int(value))
    if n == 0:
        return False
    if binary and n >= 1024:
        return n % 1024 == 0
    return n % 1000 == 0


def vmemory_mib(raw: object, *, field: str) -> int:
    """The MiB a ``metax-tech.com/vmemory`` quantity asks for (HAMi's rule); raises ProtocolError.

    Only whole numbers are read (as HAMi's ``AsInt64``): a fraction is refused, not rounded."""
    value = parse_quantity(raw)
    if value != value.to_integral_value():
        raise ProtocolError(f"{field}: {raw!r} is not a whole number")
    binary = str(raw).strip().endswith("i")  # Ki, Mi, Gi, ...
    if _canonical_has_suffix(value, binary):
        return int(value) // _MIB
    return int(value) * _GIB_IN_MIB
