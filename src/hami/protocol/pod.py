"""Pod device encoding used by ``*-devices-to-allocate`` / ``*-devices-allocated``, and MIG allocations.

Device: ``UUID,Type,Usedmem,Usedcores`` terminated by ``:``. Container: its devices concatenated,
terminated by ``;``. One entry per container, init containers first; containers without devices are
empty entries, which are kept (they carry the index mapping). A trailing ``;`` is tolerated::

    ;GPU-aaaa,NVIDIA,3000,30:;GPU-bbbb,NVIDIA,5000,0:GPU-cccc,NVIDIA,5000,0:;
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from hami.protocol.errors import ProtocolError
from hami.protocol.quantity import ascii_int


@dataclass(frozen=True, slots=True)
class ContainerDevice:
    """One card (or slice of it) given to one container."""

    uuid: str
    type: str
    usedmem: int
    usedcores: int


ContainerDevices = tuple[ContainerDevice, ...]
PodDevices = list[ContainerDevices]


def encode_container_devices(devices: Sequence[ContainerDevice]) -> str:
    """Encode one container's devices (no trailing ``;``)."""
    out = []
    for d in devices:
        for name, text in (("uuid", d.uuid), ("type", d.type)):
            if any(c in text for c in ",:;"):
                raise ProtocolError(f"device {d.uuid!r}: field {name!r} cannot contain ',', ':' or ';'")
        out.append(f"{d.uuid},{d.type},{d.usedmem},{d.usedcores}:")
    return "".join(out)


def encode_pod_devices(containers: Sequence[Sequence[ContainerDevice]]) -> str:
    """Encode every container (init first), each terminated by ``;``."""
    return "".join(encode_container_devices(c) + ";" for c in containers)


def _decode_device(text: str, where: str) -> ContainerDevice:
    fields = text.split(",")
    if len(fields) < 4:
        raise ProtocolError(f"{where}: device {text!r} must have 4 comma fields (uuid,type,mem,cores)")
    try:
        mem = ascii_int(fields[2])
        cores = ascii_int(fields[3])
    except ValueError:
        raise ProtocolError(f"{where}: device {text!r}: memory and cores must be integers") from None
    if mem < 0 or cores < 0:
        raise ProtocolError(f"{where}: device {text!r}: memory and cores must not be negative")
    if not fields[0]:
        raise ProtocolError(f"{where}: device {text!r} has an empty uuid")
    return ContainerDevice(uuid=fields[0], type=fields[1], usedmem=mem, usedcores=cores)


def decode_pod_devices(value: str) -> PodDevices:
    """Decode a pod device annotation into one tuple of devices per container."""
    if not value:
        return []
    entries = value.split(";")
    if entries and entries[-1] == "":
        entries.pop()
    out: PodDevices = []
    for ci, entry in enumerate(entries):
        devices = tuple(_decode_device(d, f"container[{ci}]") for d in entry.split(":") if d.strip() != "")
        out.append(devices)
    return out


@dataclass(frozen=True, slots=True)
class MigAllocation:
    """One MIG instance reserved for a container (runtime identity filled in by the device plugin)."""

    container_index: int
    device_index: int
    gpu_uuid: str
    profile: str
    placement_start: int
    placement_size: int
    mig_uuid: str | None = None
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


def _mig_json(a: MigAllocation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "containerIndex": a.container_index,
        "deviceIndex": a.device_index,
        "gpuUUID": a.gpu_uuid,
        "profile": a.profile,
        "placement": {"start": a.placement_start, "size": a.placement_size},
    }
    if a.mig_uuid is not None:
        out["migUUID"] = a.mig_uuid
        out["gpuInstanceID"] = a.gpu_instance_id
        out["computeInstanceID"] = a.compute_instance_id
    return out


def encode_mig_allocations(allocations: Sequence[MigAllocation]) -> str:
    """Encode ``hami.io/vgpu-mig-allocations``."""
    return orjson.dumps([_mig_json(a) for a in allocations]).decode()


def _req_int(obj: dict[str, Any], key: str, where: str) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ProtocolError(f"{where}: field {key!r} must be a non-negative integer, got {v!r}")
    return v


def decode_mig_allocations(value: str) -> list[MigAllocation]:
    """Decode MIG allocations; rejects partial runtime identity and duplicate container/device pairs."""
    if not value.strip():
        return []
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"MIG allocations are not valid JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ProtocolError("MIG allocations must be a JSON array")
    out: list[MigAllocation] = []
    seen: set[tuple[int, int]] = set()
    for i, item in enumerate(raw):
        where = f"mig allocation [{i}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"{where}: must be an object")
        placement = item.get("placement")
        if not isinstance(placement, dict):
            raise ProtocolError(f"{where}: field 'placement' must be an object")
        runtime = [item.get(k) for k in ("migUUID", "gpuInstanceID", "computeInstanceID")]
        present = sum(v is not None for v in runtime)
        if present not in (0, 3):
            raise ProtocolError(
                f"{where}: runtime identity is partial (need all of migUUID/gpuInstanceID/"
                "computeInstanceID or none)"
            )
        gpu_uuid, profile = item.get("gpuUUID"), item.get("profile")
        if not isinstance(gpu_uuid, str) or not gpu_uuid or not isinstance(profile, str) or not profile:
            raise ProtocolError(f"{where}: fields 'gpuUUID' and 'profile' must be non-empty strings")
        alloc = MigAllocation(
            container_index=_req_int(item, "containerIndex", where),
            device_index=_req_int(item, "deviceIndex", where),
            gpu_uuid=gpu_uuid,
            profile=profile,
            placement_start=_req_int(placement, "start", where),
            placement_size=_req_int(placement, "size", where),
            mig_uuid=str(runtime[0]) if present else None,
            gpu_instance_id=_req_int(item, "gpuInstanceID", where) if present else None,
            compute_instance_id=_req_int(item, "computeInstanceID", where) if present else None,
        )
        key = (alloc.container_index, alloc.device_index)
        if key in seen:
            raise ProtocolError(f"{where}: duplicate containerIndex/deviceIndex {key}")
        seen.add(key)
        out.append(alloc)
    return out
