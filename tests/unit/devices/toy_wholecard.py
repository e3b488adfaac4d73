"""A toy vendor that hands out whole cards by count: only the required backend members, no hooks.

Node: ``toy.example/cards: <uuid>,<uuid>,...``; container: ``toy.example/card: <n>``; decision:
``toy.example/cards-allocated`` in HAMi's pod device encoding. Written against the public backend
protocol only, as a new vendor would be: it proves a count-only vendor needs nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hami.config._base import ConfigModel
from hami.devices import Card, CardSelector, DeviceRequest, NodeCards, Placement, RequestError
from hami.protocol.pod import decode_pod_devices, encode_pod_devices

VENDOR = "TOYWHOLE"
REGISTER = "toy.example/cards"
ALLOCATED = "toy.example/cards-allocated"


class ToyWholeConfig(ConfigModel):
    """``toywhole:`` — the toy's config section."""

    resource_count_name: str = "toy.example/card"


class ToyWholeBackend:
    vendor = VENDOR
    allocated_key = ALLOCATED
    to_allocate_key = "toy.example/cards-to-allocate"
    decision_keys = (ALLOCATED, "toy.example/cards-to-allocate")
    lock_key: str | None = None

    def __init__(self, config: ToyWholeConfig | None = None) -> None:
        self.config = config or ToyWholeConfig()

    @property
    def resource_names(self) -> tuple[str, ...]:
        return (self.config.resource_count_name,)

    @property
    def memory_resource(self) -> str:
        return self.config.resource_count_name

    def parse_container(self, container: Mapping[str, Any]) -> DeviceRequest | None:
        limits = (container.get("resources") or {}).get("limits") or {}
        raw = limits.get(self.config.resource_count_name)
        if raw is None:
            return None
        count = int(raw)
        if count < 0:
            raise RequestError(
                container=str(container.get("name")),
                resource=self.config.resource_count_name,
                reason="negative",
            )
        return DeviceRequest(vendor=VENDOR, count=count) if count else None

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        value = ((node.get("metadata") or {}).get("annotations") or {}).get(REGISTER)
        if not value:
            return None
        uuids = [u for u in value.split(",") if u]
        cards = tuple(
            Card(uuid=u, vendor=VENDOR, type="ToyCard", count=1, totalmem=0, totalcores=1, index=i)
            for i, u in enumerate(uuids)
        )
        return NodeCards(cards=cards)

    def selector(self, annotations: Mapping[str, str]) -> CardSelector:
        return CardSelector()

    def decision_annotations(self, containers: Sequence[Sequence[Placement]]) -> dict[str, str]:
        encoded = encode_pod_devices([[p.device for p in c] for c in containers])
        return {ALLOCATED: encoded, self.to_allocate_key: encoded}

    def decode_allocation(self, annotations: Mapping[str, str]) -> list[tuple[Placement, ...]] | None:
        value = annotations.get(ALLOCATED)
        if not value:
            return None
        return [tuple(Placement(device=d) for d in c) for c in decode_pod_devices(value)]
