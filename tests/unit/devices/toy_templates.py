"""A toy template/profile vendor (Ascend-like): every optional hook, written as one module.

Each chip type is one entry of a list-valued config section (``toytpls:``), so one config gives
several backends (vendor ``TOYTPL-<chip>``). A container asks ``toy.example/<chip>: <n>`` and
``toy.example/<chip>-mem: <MiB>``; the request's payload is the smallest template with that much
memory. A node advertises ``toy.example/<chip>-cards: <uuid>:<tpl>|<tpl>,...``: the templates each
card offers.

Hooks: extra rejection (a card that does not offer the template: ``CardTemplateUnavailable``),
sizing (a slice takes the template's memory and cores, payload = template name), custom usage (a
template takes ``units`` slots of the card, and the card payload lists templates in use), card
choice (contiguous card indices), node score (+50 for ``fast`` nodes), admission (sets
``TOY_TEMPLATE``, denies more than 4 templates), decision annotations that see the pod, and its
own node-lock key and value format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Self

from hami.config._base import ConfigModel
from hami.devices import Card, CardSelector, DeviceRequest, NodeCards, Placement
from hami.devices.hooks import AdmissionOutcome, CardUse, ContainerEditor, default_fits
from hami.protocol.errors import ProtocolError
from hami.protocol.nodelock import NodeLock, NodeLockCodec
from hami.protocol.pod import ContainerDevice, decode_pod_devices, encode_pod_devices
from hami.scheduling.policy import CardPolicy

TEMPLATE_UNAVAILABLE = "CardTemplateUnavailable"


class ToyTemplate(ConfigModel):
    name: str
    memory: int
    cores: int
    units: int = 1


class ToyChipConfig(ConfigModel):
    """One ``toytpls:`` entry: a chip and its templates."""

    chip: str
    templates: list[ToyTemplate]


def _encode_lock(lock: NodeLock) -> str:
    return f"{lock.namespace}/{lock.name}@{int(lock.time.timestamp())}"


def _decode_lock(value: str) -> NodeLock:
    owner, _, stamp = value.partition("@")
    ns, _, name = owner.partition("/")
    if not (ns and name and stamp.isdigit()):
        raise ProtocolError(f"toy lock {value!r} must be '<ns>/<name>@<unix time>'")
    return NodeLock(time=datetime.fromtimestamp(int(stamp), UTC), namespace=ns, name=name)


class TemplatesInUse:
    """The card payload: templates the card offers and those in use."""

    __slots__ = ("in_use", "offered")

    def __init__(self, offered: frozenset[str], in_use: list[str] | None = None) -> None:
        self.offered = offered
        self.in_use: list[str] = in_use if in_use is not None else []

    def copy(self) -> Self:
        return type(self)(self.offered, list(self.in_use))

    def add(self, placement_payload: Any) -> None:
        self.in_use.append(placement_payload)

    def remove(self, placement_payload: Any) -> None:
        if placement_payload in self.in_use:
            self.in_use.remove(placement_payload)


class ToyTemplateBackend:
    lock_key: str | None = "toy.example/lock"
    node_lock = NodeLockCodec(key="toy.example/lock", encode=_encode_lock, decode=_decode_lock)

    def __init__(self, config: ToyChipConfig) -> None:
        self.config = config
        self.chip = config.chip
        self.vendor = f"TOYTPL-{config.chip}"
        self.templates = {t.name: t for t in config.templates}
        self.allocated_key = f"toy.example/{self.chip}-allocated"
        self.to_allocate_key = f"toy.example/{self.chip}-to-allocate"
        self.owner_key = f"toy.example/{self.chip}-owner"
        self.decision_keys = (self.allocated_key, self.to_allocate_key, self.owner_key)
        self.count_resource = f"toy.example/{self.chip}"
        self.memory_resource = f"toy.example/{self.chip}-mem"

    @property
    def resource_names(self) -> tuple[str, ...]:
        return (self.count_resource, self.memory_resource)

    # --- required members ----------------------------------------------------------------------
    def parse_container(self, container: Mapping[str, Any]) -> DeviceRequest | None:
        limits = (container.get("resources") or {}).get("limits") or {}
        if self.count_resource not in limits:
            return None
        mem = int(limits.get(self.memory_resource, 0))
        fitting = sorted((t for t in self.templates.values() if t.memory >= mem), key=lambda t: t.memory)
        tpl = fitting[0]
        return DeviceRequest(
            vendor=self.vendor,
            count=int(limits[self.count_resource]),
            mem=tpl.memory,
            cores=tpl.cores,
            payload=tpl.name,
        )

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        value = annotations.get(f"toy.example/{self.chip}-cards")
        if not value:
            return None
        kind = annotations.get("toy.example/kind", "slow")
        cards = []
        for i, entry in enumerate(value.split(",")):
            uuid, _, offered = entry.partition(":")
            cards.append(
                Card(
                    uuid=uuid,
                    vendor=self.vendor,
                    type=f"{self.chip}-{kind}",
                    count=4,
                    totalmem=16000,
                    totalcores=100,
                    index=i,
                    payload=TemplatesInUse(frozenset(offered.split("|"))),
                )
            )
        return NodeCards(cards=tuple(cards))

    def selector(self, annotations: Mapping[str, str]) -> CardSelector:
        return CardSelector()

    def decision_annotations(self, containers: Sequence[Sequence[Placement]]) -> dict[str, str]:
        encoded = encode_pod_devices([[p.device for p in c] for c in containers])
        tpls = ";".join(",".join(str(p.payload) for p in c) for c in containers)
        return {self.allocated_key: f"{encoded}|{tpls}", self.to_allocate_key: encoded}

    def decode_allocation(self, annotations: Mapping[str, str]) -> list[tuple[Placement, ...]] | None:
        value = annotations.get(self.allocated_key)
        if not value:
            return None
        encoded, _, tpls = value.partition("|")
        names = [c.split(",") if c else [] for c in tpls.split(";")]
        return [
            tuple(Placement(device=d, payload=names[ci][di]) for di, d in enumerate(c))
            for ci, c in enumerate(decode_pod_devices(encoded))
        ]

    # --- hooks ---------------------------------------------------------------------------------
    def reject_card(self, card: Card, request: DeviceRequest) -> str | None:
        assert isinstance(card.payload, TemplatesInUse)
        return None if request.payload in card.payload.offered else TEMPLATE_UNAVAILABLE

    def fits(self, card: Card, request: DeviceRequest) -> str | None:
        if card.count - card.used < self.templates[request.payload].units:
            return "CardTemplateUnitsExhausted"
        return default_fits(card, request)

    def size(self, card: Card, request: DeviceRequest, container_index: int, device_index: int) -> Placement:
        tpl = self.templates[request.payload]
        return Placement(
            device=ContainerDevice(card.uuid, self.vendor, tpl.memory, tpl.cores), payload=tpl.name
        )

    def apply_usage(self, card: Card, use: CardUse, sign: int) -> None:
        # a template takes ``units`` slots: slots come from the templates held, not from containers
        card.used += sign * sum(self.templates[t].units for t in use.payloads)
        card.usedmem += sign * use.mem
        card.usedcores += sign * use.cores
        assert isinstance(card.payload, TemplatesInUse)
        for t in use.payloads:
            if sign > 0:
                card.payload.add(t)
            else:
                card.payload.remove(t)

    def choose_cards(
        self, ordered: list[Card], need: int, policy: CardPolicy, pair_scores: Mapping[str, Mapping[str, int]]
    ) -> list[Card]:
        """The first run of ``need`` cards with consecutive indices (fewer cards: the ordered list)."""
        by_index = sorted(ordered, key=lambda c: c.index)
        for i in range(len(by_index) - need + 1):
            run = by_index[i : i + need]
            if run[-1].index - run[0].index == need - 1:
                return run
        return ordered

    def node_score(self, cards: Sequence[Card], requests: Sequence[DeviceRequest]) -> float:
        return 50.0 if any(c.type.endswith("-fast") for c in cards) else 0.0

    def pod_decision_annotations(
        self, pod: Mapping[str, Any], containers: Sequence[Sequence[Placement]]
    ) -> dict[str, str]:
        out = self.decision_annotations(containers)
        out[self.owner_key] = str((pod.get("metadata") or {}).get("name"))
        return out

    def core_limit_off(self) -> bool:
        return False

    def admit_container(
        self, request: DeviceRequest | None, edit: ContainerEditor, out: AdmissionOutcome
    ) -> None:
        name = edit.name
        if request is None:
            return
        if request.count > 4:
            out.invalid.append(f"container {name!r}: {self.count_resource}: at most 4 templates")
            return
        edit.set_env("TOY_TEMPLATE", str(request.payload))

    def admit_pod(self, spec: Mapping[str, Any], used: bool) -> list[dict[str, Any]]:
        return []
