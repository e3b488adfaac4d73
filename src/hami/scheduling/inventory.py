"""Which node registered each card id: one card id on two nodes is kept by the first node only.

Pod annotations and the usage ledger know a card by its id alone; a second node registering the
same id would let usage be charged to one card while the other looks free. The node that
registered the id first keeps it; the later one has that card left out (with a warning) and is
read again once the id is free. Pure bookkeeping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hami.devices.base import Card


class CardOwners:
    """Card id → the node that registered it first, and the nodes waiting for an id to be free."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}
        self._owned: dict[str, set[str]] = {}
        #: nodes with a card left out for a duplicate id (name -> the Node object last seen)
        self._waiting: dict[str, Mapping[str, Any]] = {}

    def claim(
        self, name: str, node: Mapping[str, Any], cards: Sequence[Card]
    ) -> tuple[list[Card], list[str], bool]:
        """Claim ``cards`` for node ``name``: ``(kept, warnings, freed)``; ``freed`` when the node
        gave up an id it held before (a waiting node may get it now)."""
        before = self.release(name)
        kept: list[Card] = []
        warnings: list[str] = []
        for card in cards:
            owner = self._owner.get(card.uuid)
            if owner is not None:
                warnings.append(f"card {card.uuid!r}: field 'id' is already registered by node {owner}")
                continue
            self._owner[card.uuid] = name
            kept.append(card)
        self._owned[name] = {c.uuid for c in kept}
        if warnings:
            self._waiting[name] = node
        return kept, warnings, bool(before - self._owned[name])

    def release(self, name: str) -> set[str]:
        """Node ``name`` holds no id any more (removed or unusable); the ids it held."""
        self._waiting.pop(name, None)
        held = self._owned.pop(name, set())
        for uuid in held:
            if self._owner.get(uuid) == name:
                del self._owner[uuid]
        return held

    def waiting(self) -> list[Mapping[str, Any]]:
        """Nodes that had a card left out for a duplicate id, to be read again when ids are freed."""
        return list(self._waiting.values())
