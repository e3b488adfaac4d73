"""Enflame DRS (HAMi CommonWord ``Enflame``): hard-partitioned GCU instances cut by profile.

Inventory: the node annotation ``enflame.com/gcu-drs-capacity``, JSON
``{"devices":[{"index":"0","minor":"0","capacity":6}],"profiles":{"1g.6gb":"0","3g.20gb":"1"}}``
written by Enflame's device plugin. Each device is a card ``<node>-enflame-drs-<index>`` with
``capacity`` slices (its slots), the largest profile's memory (GiB x 1024 MiB) and 100 cores; the
profiles (``<slices>g.<GiB>gb`` -> profile id) are the node's, shared by its devices. A profile's
core share is ``ceil(slices x 100 / largest profile's slices)``.

Requests (one instance per container, HAMi's ``Nums`` fixed at 1): ``enflame.com/drs-gcu: n`` asks
for the profile of exactly ``n`` slices (the name is ``resourceNameVGCU``, ``enflame.com/vgcu``, when
the config sets that and not ``resourceNameDRSGCU``, as HAMi resolves it); ``enflame.com/gcu-memory`` / ``gcu-core`` ask for the
smallest profile (fewest slices, then least memory) with at least that memory and core share.
The memory is GiB, or MiB when it is more than twice the largest profile's GiB (HAMi's rule).

Fit: the profile must exist on the node (``ModeNotFit``), and the card must have its slices
(``CardTimeSlicingExhausted``: every slice, where HAMi checks for one), its memory and its cores
free. A placement takes the profile's slices (``Used += slices``), memory and core share.

Decision: ``hami.io/enflame-vgpu-devices-allocated`` (HAMi's pod device encoding; there is no
to-allocate key), and at the decision, as HAMi's Filter writes them: ``enflame.com/gcu-assigned``
``false``, ``gcu-assigned-time`` (Unix nanoseconds), ``gcu-assigned-index`` and ``gcu-assigned-id``
(the first placed device's index), ``gcu-assigned-minor``, ``gcu-request-size`` (its slices) and
``assigned-containers`` (JSON by container name: ``allocated``, ``request``, ``profileID``,
``profileName``). Filters ``enflame.com/use-gpuuuid`` / ``nouse-gpuuuid``; no node lock.

Guarantees: pure; a corrupt capacity annotation is a :class:`ProtocolError` naming the field; a
running pod's slices are recovered from its allocation and the node's profiles (a record matching
no profile counts one slice, as HAMi).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hami.devices.base import Card, DeviceRequest, NodeCards, Placement, RequestError
from hami.devices.common import (
    NodeFacts,
    SpecBackend,
    VendorSpec,
    filter_keys,
    int_resource,
    node_annotations,
)
from hami.devices.enflame_config import EnflameConfig
from hami.devices.hooks import CARD_INSUFFICIENT_CORE, CARD_INSUFFICIENT_MEMORY, CardUse, QuotaNames
from hami.protocol import bodies
from hami.protocol.errors import ProtocolError
from hami.protocol.pod import ContainerDevice, decode_pod_devices

VENDOR = "Enflame"
CAPACITY_KEY = "enflame.com/gcu-drs-capacity"
ALLOCATED_KEY = "hami.io/enflame-vgpu-devices-allocated"
ASSIGNED_KEY = "enflame.com/gcu-assigned"
ASSIGNED_TIME_KEY = "enflame.com/gcu-assigned-time"
ASSIGNED_INDEX_KEY = "enflame.com/gcu-assigned-index"
ASSIGNED_ID_KEY = "enflame.com/gcu-assigned-id"
ASSIGNED_MINOR_KEY = "enflame.com/gcu-assigned-minor"
REQUEST_SIZE_KEY = "enflame.com/gcu-request-size"
ASSIGNED_CONTAINERS_KEY = "assigned-containers"
MODE_NOT_FIT = "ModeNotFit"
SLICES_EXHAUSTED = "CardTimeSlicingExhausted"
_PROFILE_RE = re.compile(r"\s*(\d+)g\.(\d+)gb\s*")


@dataclass(frozen=True, slots=True)
class Profile:
    """One DRS profile of a node: ``<slices>g.<memory_gb>gb`` and its id."""

    name: str
    id: str
    slices: int
    memory_gb: int
    cores: int

    @property
    def memory_mib(self) -> int:
        return self.memory_gb * 1024


class DrsFacts(NodeFacts):
    """A DRS card's payload: its device index and minor, the node's profiles (sorted smallest
    first) — immutable facts; usage lives in the card's counters."""

    __slots__ = ("index", "minor", "profiles")

    def __init__(self, index: str, minor: str, profiles: tuple[Profile, ...]) -> None:
        self.index = index
        self.minor = minor
        self.profiles = profiles

    def slices_of(self, instance: DrsInstance) -> int:
        """The slices a placed instance holds (from the record when it does not say)."""
        if instance.slices:
            return instance.slices
        for p in self.profiles:
            if p.memory_mib == instance.mem and p.cores == instance.cores:
                return p.slices
        return 1


@dataclass(frozen=True, slots=True)
class DrsAsk:
    """A container's DRS request (the request payload): exact slices, or memory/cores."""

    slices: int = 0
    memory: int = 0
    cores: int = 0

    def profile(self, profiles: tuple[Profile, ...]) -> Profile | None:
        """HAMi's choice: the profile of exactly ``slices``, else the smallest that covers memory
        (GiB; MiB above twice the largest profile's GiB) and cores."""
        if not profiles:
            return None
        if self.slices:
            return next((p for p in profiles if p.slices == self.slices), None)
        largest_gb = profiles[-1].memory_gb
        gb = self.memory
        if gb > 2 * largest_gb:
            gb = math.ceil(gb / 1024)
        for p in profiles:
            if p.memory_gb >= gb and p.cores >= self.cores:
                return p
        return None


@dataclass(frozen=True, slots=True)
class DrsInstance:
    """A placement's payload: the instance's memory and core share (its wire record), and, when
    placed by this scheduler, its slices, profile and device (0 / empty when decoded). Equal to the
    payload decoded from the pod's record (only the record is compared), so a bound pod's
    allocation equals its reservation."""

    mem: int
    cores: int
    slices: int = field(default=0, compare=False)
    profile_name: str = field(default="", compare=False)
    profile_id: str = field(default="", compare=False)
    index: str = field(default="", compare=False)
    minor: str = field(default="", compare=False)


def parse_profiles(raw: Any) -> tuple[Profile, ...]:
    """The node's profiles, smallest first; names not of the form ``<n>g.<m>gb`` are skipped (HAMi)."""
    if not isinstance(raw, Mapping):
        raise ProtocolError(f"{CAPACITY_KEY}: field 'profiles' must be an object, got {raw!r}")
    shapes: list[tuple[str, str, int, int]] = []
    for name, pid in raw.items():
        m = _PROFILE_RE.fullmatch(str(name).lower())
        if m is None or int(m[1]) <= 0 or int(m[2]) <= 0:
            continue
        shapes.append((str(name), str(pid), int(m[1]), int(m[2])))
    if not shapes:
        raise ProtocolError(f"{CAPACITY_KEY}: field 'profiles' has no '<slices>g.<GiB>gb' profile")
    most = max(s[2] for s in shapes)
    profiles = [Profile(n, i, s, g, math.ceil(s * 100 / most)) for n, i, s, g in shapes]
    return tuple(sorted(profiles, key=lambda p: (p.slices, p.memory_gb)))


def _capacity(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ProtocolError(f"{where}: field 'capacity' must be a number, got {raw!r}")
    try:
        value = int(raw.strip()) if isinstance(raw, str) else int(raw)
    except ValueError:
        raise ProtocolError(f"{where}: field 'capacity' must be a number, got {raw!r}") from None
    if value <= 0:
        raise ProtocolError(f"{where}: field 'capacity' must be positive, got {raw!r}")
    return value


def decode_capacity(node_name: str, value: str) -> list[Card]:
    """The cards of a ``enflame.com/gcu-drs-capacity`` value; raises ProtocolError when corrupt."""
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise ProtocolError(f"{CAPACITY_KEY}: not JSON ({exc})") from None
    if not isinstance(doc, Mapping):
        raise ProtocolError(f"{CAPACITY_KEY}: must be an object, got {value!r}")
    profiles = parse_profiles(doc.get("profiles"))
    devices = doc.get("devices")
    if not isinstance(devices, list) or not devices:
        raise ProtocolError(f"{CAPACITY_KEY}: field 'devices' must be a non-empty list")
    memory = max(p.memory_gb for p in profiles) * 1024
    cards: list[Card] = []
    for pos, d in enumerate(devices):
        where = f"{CAPACITY_KEY}: devices[{pos}]"
        if not isinstance(d, Mapping):
            raise ProtocolError(f"{where}: must be an object, got {d!r}")
        raw_index = str(d.get("index", "")).strip()
        # HAMi: an index that is not a number is the device's position in the list
        index = int(raw_index) if raw_index.isdigit() else pos
        if any(c.index == index for c in cards):
            raise ProtocolError(f"{where}: field 'index': device {index} is listed twice")
        minor = str(d.get("minor") or "").strip() or str(index)
        cards.append(
            Card(
                uuid=f"{node_name}-enflame-drs-{index}",
                vendor=VENDOR,
                type=VENDOR,
                count=_capacity(d.get("capacity"), where),
                totalmem=memory,
                totalcores=100,
                index=index,
                payload=DrsFacts(str(index), minor, profiles),
            )
        )
    return cards


def _facts(card: Card) -> DrsFacts:
    facts = card.payload
    assert isinstance(facts, DrsFacts), card
    return facts


class EnflameDRSBackend(SpecBackend):
    config_type = EnflameConfig

    def make_spec(self, config: EnflameConfig) -> VendorSpec:
        return VendorSpec(
            vendor=VENDOR,
            count_name=config.drs_count_name,
            to_allocate_key=ALLOCATED_KEY,
            allocated_key=ALLOCATED_KEY,
            lock=None,
            **filter_keys("enflame.com"),
            write_to_allocate=False,
        )

    @property
    def resource_names(self) -> tuple[str, ...]:
        c = self.config
        return (c.drs_count_name, c.resource_name_gcu_memory, c.resource_name_gcu_core)

    @property
    def quota_names(self) -> QuotaNames:
        # the memory resource's unit is ambiguous (GiB or MiB): no namespace quota for DRS
        return QuotaNames("", "")

    @property
    def decision_keys(self) -> tuple[str, ...]:
        return (
            ALLOCATED_KEY,
            ASSIGNED_KEY,
            ASSIGNED_TIME_KEY,
            ASSIGNED_INDEX_KEY,
            ASSIGNED_ID_KEY,
            ASSIGNED_MINOR_KEY,
            REQUEST_SIZE_KEY,
            ASSIGNED_CONTAINERS_KEY,
        )

    # --- requests ----------------------------------------------------------------------------
    def parse_container(self, container: Mapping[str, Any]) -> DeviceRequest | None:
        c = self.config
        cname = str(container.get("name", "?"))
        slices = int_resource(container, cname, c.drs_count_name)
        if slices is not None:
            return DeviceRequest(vendor=VENDOR, count=1, payload=DrsAsk(slices=slices)) if slices else None
        memory = int_resource(container, cname, c.resource_name_gcu_memory)
        cores = int_resource(container, cname, c.resource_name_gcu_core)
        if memory is None and cores is None:
            return None
        if memory == 0:
            raise RequestError(
                container=cname, resource=c.resource_name_gcu_memory, reason="must be greater than 0"
            )
        if cores is not None and not 0 < cores <= 100:
            raise RequestError(
                container=cname, resource=c.resource_name_gcu_core, reason=f"{cores} is not in (0, 100]"
            )
        return DeviceRequest(vendor=VENDOR, count=1, payload=DrsAsk(memory=memory or 0, cores=cores or 0))

    # --- inventory ---------------------------------------------------------------------------
    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        value = node_annotations(node).get(CAPACITY_KEY)
        if not value:
            return None
        return NodeCards(cards=tuple(decode_capacity(bodies.name(node), value)))

    # --- hook: Sizing (profiles) -------------------------------------------------------------
    def _profile(self, card: Card, request: DeviceRequest) -> Profile | None:
        ask = request.payload
        assert isinstance(ask, DrsAsk), request
        return ask.profile(_facts(card).profiles)

    def fits(self, card: Card, request: DeviceRequest) -> str | None:
        p = self._profile(card, request)
        if p is None:
            return MODE_NOT_FIT
        if card.count - card.used < p.slices:
            return SLICES_EXHAUSTED
        if card.totalmem - card.usedmem < p.memory_mib:
            return CARD_INSUFFICIENT_MEMORY
        if card.totalcores - card.usedcores < p.cores:
            return CARD_INSUFFICIENT_CORE
        return None

    def size(self, card: Card, request: DeviceRequest, container_index: int, device_index: int) -> Placement:
        p = self._profile(card, request)
        assert p is not None, (card, request)
        facts = _facts(card)
        return Placement(
            device=ContainerDevice(uuid=card.uuid, type=VENDOR, usedmem=p.memory_mib, usedcores=p.cores),
            payload=DrsInstance(p.memory_mib, p.cores, p.slices, p.name, p.id, facts.index, facts.minor),
        )

    # --- hook: CardUsage (an instance takes its profile's slices) ------------------------------
    def apply_usage(self, card: Card, use: CardUse, sign: int) -> None:
        facts = _facts(card)
        card.used += sign * sum(facts.slices_of(p) for p in use.payloads if isinstance(p, DrsInstance))
        card.usedmem += sign * use.mem
        card.usedcores += sign * use.cores

    # --- decision ----------------------------------------------------------------------------
    def decode_allocation(self, annotations: Mapping[str, str]) -> list[tuple[Placement, ...]] | None:
        value = annotations.get(ALLOCATED_KEY)
        if not value:
            return None
        return [
            tuple(Placement(device=d, payload=DrsInstance(d.usedmem, d.usedcores)) for d in c)
            for c in decode_pod_devices(value)
        ]

    def placed_annotations(
        self, pod: Mapping[str, Any], containers: Sequence[Sequence[Placement]], node: str, now_ns: int
    ) -> dict[str, str]:
        names = [str(c.get("name", "")) for c in bodies.pod_containers(pod)]
        out = {ASSIGNED_KEY: "false", ASSIGNED_TIME_KEY: str(now_ns)}
        assigned: dict[str, dict[str, Any]] = {}
        for ci, placements in enumerate(containers):
            if not placements or not isinstance(placements[0].payload, DrsInstance):
                continue
            inst = placements[0].payload
            name = names[ci] if ci < len(names) else f"container-{ci}"
            record: dict[str, Any] = {"allocated": False, "request": inst.slices or 1}
            if inst.profile_id:
                record["profileID"] = inst.profile_id
            if inst.profile_name:
                record["profileName"] = inst.profile_name
            assigned[name] = record
            if ASSIGNED_INDEX_KEY not in out and inst.index:
                out[ASSIGNED_INDEX_KEY] = out[ASSIGNED_ID_KEY] = inst.index
            if ASSIGNED_MINOR_KEY not in out and inst.minor:
                out[ASSIGNED_MINOR_KEY] = inst.minor
            out.setdefault(REQUEST_SIZE_KEY, str(inst.slices or 1))
        if assigned:
            out[ASSIGNED_CONTAINERS_KEY] = json.dumps(dict(sorted(assigned.items())), separators=(",", ":"))
        return out
