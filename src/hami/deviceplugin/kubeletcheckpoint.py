"""The kubelet device manager's checkpoint, read where PodResources is silent: regular init containers.

The kubelet's PodResources `List` reports a pod's app containers and sidecars, not its regular init
containers (`podresources`). When an app container asks for the same resource, it reuses the init
container's IDs and PodResources shows them under its name; when no app container does, nothing in
PodResources holds the init container's IDs. The kubelet records every allocation, init containers
included, in its device manager checkpoint `kubelet_internal_checkpoint` in the device-plugin
directory (the plugin's own socket directory), written at Allocate before any container of the pod
starts (kubelet v1.34 `pkg/kubelet/cm/devicemanager`: `allocateContainerResources` ends with
`writeCheckpoint`; `checkpoint.PodDevicesEntry`):

    {"Data": {"PodDeviceEntries": [{"PodUID": "...", "ContainerName": "...", "ResourceName": "...",
              "DeviceIDs": {"<numa node>": ["id", ...]}, "AllocResp": "<base64>"}, ...],
              "RegisteredDevices": {...}},
     "Checksum": 123}

(`DeviceIDs` was a plain list before v1.20; both are read.) It is the kubelet's internal format, so
this module reads only those four fields and fails, naming the file and the field, on anything else.

Guarantees: `parse` is pure and total over bytes: it returns entries or raises `CheckpointError`;
`read` treats a missing file as "no allocation recorded" (the kubelet writes it at its first
allocation) and raises `CheckpointError` for an unreadable or malformed one; `holders` is exact —
a pod is returned only for containers whose IDs of the resource are exactly the IDs asked about.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

#: The file name the kubelet's device manager checkpoints to, in the device-plugin directory.
CHECKPOINT_NAME = "kubelet_internal_checkpoint"


class CheckpointError(Exception):
    """The kubelet's device checkpoint could not be read or does not have the expected shape."""


@dataclass(frozen=True)
class Entry:
    """One container's allocation of one resource, as the kubelet recorded it."""

    pod_uid: str
    container: str
    resource: str
    ids: tuple[str, ...]  # sorted


def _ids(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, list):
        groups: Iterable[Any] = [raw]
    elif isinstance(raw, Mapping):
        groups = raw.values()
    elif raw is None:
        return ()
    else:
        raise CheckpointError(
            f"{where}.DeviceIDs: expected a map of NUMA node to IDs, got {type(raw).__name__}"
        )
    out: set[str] = set()
    for group in groups:
        if group is None:
            continue
        if not isinstance(group, list) or not all(isinstance(i, str) for i in group):
            raise CheckpointError(f"{where}.DeviceIDs: expected lists of strings")
        out.update(group)
    return tuple(sorted(out))


def _text(entry: Mapping[str, Any], name: str, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value:
        raise CheckpointError(f"{where}.{name}: expected a non-empty string, got {value!r}")
    return value


def parse(raw: bytes, source: str = CHECKPOINT_NAME) -> list[Entry]:
    """The entries of a checkpoint's bytes; `source` names it in errors."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise CheckpointError(f"{source}: not JSON: {e}") from e
    data = doc.get("Data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: Data: expected an object")
    entries = data.get("PodDeviceEntries")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise CheckpointError(f"{source}: Data.PodDeviceEntries: expected a list")
    out = []
    for i, item in enumerate(entries):
        where = f"{source}: Data.PodDeviceEntries[{i}]"
        if not isinstance(item, dict):
            raise CheckpointError(f"{where}: expected an object")
        out.append(
            Entry(
                _text(item, "PodUID", where),
                _text(item, "ContainerName", where),
                _text(item, "ResourceName", where),
                _ids(item.get("DeviceIDs"), where),
            )
        )
    return out


def read(path: Path) -> list[Entry]:
    """The entries of the checkpoint at `path`; none when the file does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CheckpointError(f"{path}: {e.strerror or e}") from e
    return parse(raw, str(path))


def holders(
    entries: Iterable[Entry], resource: str, device_ids: Collection[str]
) -> dict[str, tuple[str, ...]]:
    """Pod UID -> the containers whose IDs of `resource` are exactly `device_ids`."""
    want = tuple(sorted(set(device_ids)))
    out: dict[str, list[str]] = {}
    for e in entries:
        if e.resource == resource and e.ids == want:
            out.setdefault(e.pod_uid, []).append(e.container)
    return {uid: tuple(names) for uid, names in out.items()}


def id_sets(entries: Iterable[Entry], resource: str) -> set[tuple[str, ...]]:
    """The ID sets of `resource` the checkpoint records (sorted tuples)."""
    return {e.ids for e in entries if e.resource == resource and e.ids}
