"""Node registration codecs: HAMi's JSON ``DeviceInfo`` list (v2.8+), the legacy colon form, and pair scores.

JSON form (``hami.io/node-nvidia-register``)::

    [{"id":"GPU-1","index":1,"count":10,"devmem":8192,"devcore":100,"type":"NVIDIA-A100",
      "numa":1,"mode":"hami-core","health":true}]

Go's ``omitempty`` drops zero values (``index:0``, ``numa:0``, ``health:false``, empty ``mode``), so
the decoder treats a missing field as its zero value; ``custominfo`` and unknown fields are ignored.

Legacy form: ``uuid,count,devmem,devcore,type,numa,health[,index,mode]:`` repeated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from hami.protocol.errors import ProtocolError
from hami.protocol.keys import MODE_HAMI_CORE, MODE_MIG, MODE_MPS
from hami.protocol.quantity import INT64_MAX, INT64_MIN, ascii_int

#: the largest card memory a registration may claim (16 TiB, in MiB); more is a broken registration
MAX_DEVMEM_MIB = 16 * 1024 * 1024
#: the most slots (pods sharing one card) a registration may claim
MAX_COUNT = 1024
#: the modes a card may be registered in
KNOWN_MODES = (MODE_HAMI_CORE, MODE_MIG, MODE_MPS)
#: what the pod device encoding (``uuid,type,mem,cores:`` per card, ``;`` per container) cannot carry
_SEPARATORS = ",:;"


@dataclass(frozen=True, slots=True)
class MigPlacement:
    """A legal placement of a MIG profile: first memory slice and slice count."""

    start: int
    size: int


@dataclass(frozen=True, slots=True)
class MigProfile:
    """A MIG profile a card can host (e.g. ``1g.10gb``)."""

    name: str
    memory_mb: int
    core: int
    slice_count: int
    placements: tuple[MigPlacement, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One physical card as a node registers it."""

    id: str
    count: int
    devmem: int
    devcore: int
    type: str
    index: int = 0
    numa: int = 0
    mode: str = ""
    health: bool = True
    mig_profiles: tuple[MigProfile, ...] = field(default=())


def json_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    """``obj[key]`` as a 64-bit integer (missing or null: 0); raises ProtocolError naming the field."""
    value = obj.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{where}: field {key!r} must be an integer, got {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ProtocolError(f"{where}: field {key!r} must be a 64-bit integer, got {value!r}")
    return value


def json_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    """``obj[key]`` as a string (missing or null: empty); raises ProtocolError naming the field."""
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: field {key!r} must be a string, got {value!r}")
    return value


def json_id(obj: Mapping[str, Any], key: str, where: str) -> str:
    """``obj[key]`` as a non-empty string (a device's identity); raises ProtocolError naming the field."""
    value = json_str(obj, key, where)
    if not value:
        raise ProtocolError(f"{where}: field {key!r} is missing or empty")
    return value


def json_bool(obj: Mapping[str, Any], key: str, where: str) -> bool:
    """``obj[key]`` as a boolean (missing: False); raises ProtocolError naming the field."""
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}: field {key!r} must be a boolean, got {value!r}")
    return value


_int = json_int
_str = json_str


def _decode_mig_profile(raw: Any, where: str) -> MigProfile:
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where}: MIG profile must be an object, got {raw!r}")
    placements_raw = raw.get("placements") or []
    if not isinstance(placements_raw, list):
        raise ProtocolError(f"{where}: field 'placements' must be a list")
    placements = []
    for p in placements_raw:
        if not isinstance(p, dict):
            raise ProtocolError(f"{where}: MIG placement must be an object, got {p!r}")
        placements.append(MigPlacement(start=_int(p, "start", where), size=_int(p, "size", where)))
    return MigProfile(
        name=_str(raw, "name", where),
        memory_mb=_int(raw, "memoryMB", where),
        core=_int(raw, "core", where),
        slice_count=_int(raw, "sliceCount", where),
        placements=tuple(placements),
    )


def json_device_objects(value: str, *, what: str, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The objects of a JSON array of devices (null: none), each with its location
    ``<prefix>device[i]`` for error messages; raises ProtocolError naming ``what`` or the location."""
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ProtocolError(f"{what} must be a JSON array of devices")
    out: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(raw):
        where = f"{prefix}device[{i}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"{where}: must be an object, got {item!r}")
        out.append((where, item))
    return out


def _decode_json_devices(value: str) -> list[DeviceInfo]:
    devices = []
    for where, item in json_device_objects(value, what="node register annotation"):
        dev_id = json_id(item, "id", where)
        health = json_bool(item, "health", where)
        profiles_raw = item.get("migProfiles") or []
        if not isinstance(profiles_raw, list):
            raise ProtocolError(f"{where}: field 'migProfiles' must be a list")
        devices.append(
            DeviceInfo(
                id=dev_id,
                index=_int(item, "index", where),
                count=_int(item, "count", where),
                devmem=_int(item, "devmem", where),
                devcore=_int(item, "devcore", where),
                type=_str(item, "type", where),
                numa=_int(item, "numa", where),
                mode=_str(item, "mode", where) or MODE_HAMI_CORE,
                health=health,
                mig_profiles=tuple(_decode_mig_profile(p, where) for p in profiles_raw),
            )
        )
    return devices


def _parse_legacy_int(text: str, name: str, where: str) -> int:
    try:
        value = ascii_int(text)
    except ValueError:
        raise ProtocolError(f"{where}: field {name!r} must be an integer, got {text!r}") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise ProtocolError(f"{where}: field {name!r} must be a 64-bit integer, got {text!r}")
    return value


def _decode_legacy_devices(value: str) -> list[DeviceInfo]:
    devices = []
    for i, entry in enumerate(value.split(":")):
        if not entry.strip():
            continue
        where = f"device[{i}]"
        fields = entry.split(",")
        if len(fields) not in (7, 9):
            raise ProtocolError(f"{where}: legacy entry must have 7 or 9 comma fields, got {len(fields)}")
        health_text = fields[6].strip().lower()
        if health_text not in ("true", "false"):
            raise ProtocolError(f"{where}: field 'health' must be true or false, got {fields[6]!r}")
        devices.append(
            DeviceInfo(
                id=fields[0].strip(),
                count=_parse_legacy_int(fields[1], "count", where),
                devmem=_parse_legacy_int(fields[2], "devmem", where),
                devcore=_parse_legacy_int(fields[3], "devcore", where),
                type=fields[4],
                numa=_parse_legacy_int(fields[5], "numa", where),
                health=health_text == "true",
                index=_parse_legacy_int(fields[7], "index", where) if len(fields) == 9 else 0,
                mode=(fields[8].strip() or MODE_HAMI_CORE) if len(fields) == 9 else MODE_HAMI_CORE,
            )
        )
    return devices


def decode_node_devices(value: str) -> list[DeviceInfo]:
    """Decode a node register annotation in either the JSON or the legacy colon form.

    A card whose ``id`` or ``type`` holds ``,`` ``:`` or ``;`` could never be written in a pod's
    device annotation, so such a registration is refused whole (like duplicate ids).
    """
    if not isinstance(value, str):
        raise ProtocolError(f"node register annotation must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        return []
    devices = _decode_json_devices(text) if text[0] in "[{n" else _decode_legacy_devices(text)
    for i, d in enumerate(devices):
        for name, field_text in (("id", d.id), ("type", d.type)):
            if any(c in field_text for c in _SEPARATORS):
                raise ProtocolError(
                    f"device[{i}]: field {name!r} ({field_text!r}) cannot contain ',', ':' or ';'"
                )
    _refuse_duplicate_ids(devices)
    return devices


def card_problem(d: DeviceInfo) -> str | None:
    """Why a decoded card cannot be scheduled onto, naming the field; None when it can.

    Memory beyond :data:`MAX_DEVMEM_MIB`, no slot or more than :data:`MAX_COUNT`, an unknown mode,
    a negative index or core count. ``devmem`` 0 is the backend's business (NVIDIA drops such a
    card unless it is MIG; whole-card vendors register no memory)."""
    if not 1 <= d.count <= MAX_COUNT:
        return f"field 'count' must be 1..{MAX_COUNT}, got {d.count}"
    if not 0 <= d.devmem <= MAX_DEVMEM_MIB:
        return f"field 'devmem' must be 0..{MAX_DEVMEM_MIB} MiB, got {d.devmem}"
    if d.devcore < 0:
        return f"field 'devcore' must not be negative, got {d.devcore}"
    if d.index < 0:
        return f"field 'index' must not be negative, got {d.index}"
    if d.mode not in KNOWN_MODES:
        return f"field 'mode' must be one of {', '.join(KNOWN_MODES)}, got {d.mode!r}"
    return None


def _refuse_duplicate_ids(devices: list[DeviceInfo]) -> None:
    """Every card is known by its id (pod annotations, the ledger); two cards with one id would let
    usage be charged to one while the other looks empty, so such a registration is refused whole."""
    seen: dict[str, int] = {}
    for i, d in enumerate(devices):
        if d.id in seen:
            raise ProtocolError(f"device[{i}]: duplicate device id {d.id!r} (also device[{seen[d.id]}])")
        seen[d.id] = i


def _device_json(dev: DeviceInfo) -> dict[str, Any]:
    # Field order and omission follow Go's encoding/json with `omitempty` on the zero-able fields.
    out: dict[str, Any] = {"id": dev.id}
    if dev.index:
        out["index"] = dev.index
    out["count"] = dev.count
    out["devmem"] = dev.devmem
    out["devcore"] = dev.devcore
    out["type"] = dev.type
    if dev.numa:
        out["numa"] = dev.numa
    if dev.mode:
        out["mode"] = dev.mode
    if dev.mig_profiles:
        out["migProfiles"] = [
            {
                "name": p.name,
                "memoryMB": p.memory_mb,
                "core": p.core,
                "sliceCount": p.slice_count,
                "placements": [{"start": pl.start, "size": pl.size} for pl in p.placements],
            }
            for p in dev.mig_profiles
        ]
    if dev.health:
        out["health"] = True
    return out


def encode_node_devices(devices: Iterable[DeviceInfo]) -> str:
    """Encode devices as the JSON register annotation HAMi v2.8+ writes."""
    return orjson.dumps([_device_json(d) for d in devices]).decode()


def encode_node_devices_legacy(devices: Iterable[DeviceInfo]) -> str:
    """Encode devices in the legacy colon form (9 fields each)."""
    parts = []
    for d in devices:
        for name, text in (("id", d.id), ("type", d.type), ("mode", d.mode)):
            if "," in text or ":" in text:
                raise ProtocolError(f"device {d.id!r}: field {name!r} cannot hold ',' or ':' in legacy form")
        health = "true" if d.health else "false"
        mode = d.mode or MODE_HAMI_CORE
        parts.append(f"{d.id},{d.count},{d.devmem},{d.devcore},{d.type},{d.numa},{health},{d.index},{mode}:")
    return "".join(parts)


PairScores = dict[str, dict[str, int]]


def decode_pair_scores(value: str) -> PairScores:
    """Decode ``hami.io/node-nvidia-score``: ``[{"uuid":"GPU-a","score":{"GPU-b":400}}]``."""
    text = value.strip()
    if not text:
        return {}
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"pair-score annotation is not valid JSON: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise ProtocolError("pair-score annotation must be a JSON array")
    out: PairScores = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("uuid"), str):
            raise ProtocolError(f"pair-score entry [{i}] must be an object with a string 'uuid'")
        scores = item.get("score") or {}
        if not isinstance(scores, dict):
            raise ProtocolError(f"pair-score entry [{i}]: field 'score' must be an object")
        row: dict[str, int] = {}
        for peer, score in scores.items():
            if isinstance(score, bool) or not isinstance(score, int):
                raise ProtocolError(f"pair-score entry [{i}]: score for {peer!r} must be an integer")
            row[str(peer)] = score
        out[item["uuid"]] = row
    return out


def encode_pair_scores(scores: Mapping[str, Mapping[str, int]]) -> str:
    """Encode pair scores in HAMi's JSON form, sorted by UUID for stable output."""
    return orjson.dumps(
        [{"uuid": uuid, "score": dict(sorted(row.items()))} for uuid, row in sorted(scores.items())]
    ).decode()
