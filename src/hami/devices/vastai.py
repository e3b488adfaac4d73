"""Vastai (HAMi CommonWord ``Vastai``): whole ``vastaitech.com/va`` devices.

Inventory: ``hami.io/node-va-register`` (JSON); handshake ``hami.io/node-handshake-va``. Filters:
``vastaitech.com/use-va`` / ``nouse-va`` (card type) and ``vastaitech.com/use-gpuuuid`` /
``nouse-gpuuuid``. Decision: ``hami.io/Vastai-devices-to-allocate`` / ``-allocated`` (HAMi's capital
V); lock ``hami.io/mutex.lock``. A card in use is refused (whole devices only).

Die mode (HAMi): when Vastai's device plugin registers its devices as dies — ``custominfo``
``{"DeviceStrategy": "die", "AIC": "<card id>"}``, several dies per AIC card — a request for several
dies takes them from the AIC cards with the most eligible dies first (HAMi's
``computeBestCombination``; equal cards in the order the fit walks them), and the node score adds,
per container, the share of its dies on its most used AIC card (1.0 when all on one card). The
score is of the choice the pod would get on the node (HAMi scores the choice it made).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from hami.devices.base import Card, DeviceRequest, NodeCards
from hami.devices.common import NodeFacts, WholeDeviceBackend, node_annotations
from hami.devices.vastai_config import VastaiConfig
from hami.scheduling.policy import CardPolicy

VENDOR = "Vastai"
DIE = "die"


class Die(NodeFacts):
    """A Vastai card registered as a die: the AIC card it belongs to (immutable)."""

    __slots__ = ("aic",)

    def __init__(self, aic: str) -> None:
        self.aic = aic


def die_facts(value: str) -> dict[str, Die]:
    """The dies of a register annotation, by device id (HAMi's ``custominfo``); empty when the
    devices are not registered as dies or the value is not JSON (the legacy colon form)."""
    try:
        doc = json.loads(value)
    except ValueError:
        return {}
    out: dict[str, Die] = {}
    for d in doc if isinstance(doc, list) else ():
        info = d.get("custominfo") if isinstance(d, Mapping) else None
        if (
            isinstance(info, Mapping)
            and info.get("DeviceStrategy") == DIE
            and isinstance(info.get("AIC"), str)
        ):
            out[str(d.get("id"))] = Die(info["AIC"])
    return out


def _die_mode(cards: Sequence[Card]) -> bool:
    return bool(cards) and all(isinstance(c.payload, Die) for c in cards)


def _aic(card: Card) -> str:
    assert isinstance(card.payload, Die), card
    return card.payload.aic


def best_combination(ordered: Sequence[Card], need: int) -> list[Card]:
    """HAMi's die choice: one die takes the first; more take whole AIC groups, largest first."""
    if need <= 1:
        return list(ordered[:1])
    if len(ordered) <= need:
        return list(ordered)
    groups: dict[str, list[Card]] = {}
    for c in ordered:
        groups.setdefault(_aic(c), []).append(c)
    # sorted is stable: equal groups keep the order of their first die in the walk
    ranked = sorted(groups.values(), key=len, reverse=True)
    return [c for group in ranked for c in group][:need]


def aic_share(chosen: Sequence[Card]) -> float:
    """The share of ``chosen`` dies on their most used AIC card."""
    if not chosen:
        return 0.0
    counts: dict[str, int] = {}
    for c in chosen:
        counts[_aic(c)] = counts.get(_aic(c), 0) + 1
    return max(counts.values()) / len(chosen)


class VastaiBackend(WholeDeviceBackend):
    config_type = VastaiConfig
    vendor_word = VENDOR
    node_word = "va"
    domain = "vastaitech.com"
    type_word = "va"

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        found = super().node_cards(node)
        if found is None:
            return None
        dies = die_facts(node_annotations(node).get(self.spec.register_key) or "")
        for c in found.cards:
            c.payload = dies.get(c.uuid)
        return found

    # --- hook: CardChoice (die mode: whole AIC cards first) --------------------------------------
    def choose_cards(
        self, ordered: list[Card], need: int, policy: CardPolicy, pair_scores: Mapping[str, Mapping[str, int]]
    ) -> list[Card]:
        return best_combination(ordered, need) if _die_mode(ordered) else ordered

    # --- hook: NodeScore (die mode: how whole each container's AIC card is) ----------------------
    def node_score(self, cards: Sequence[Card], requests: Sequence[DeviceRequest]) -> float:
        if not _die_mode(cards):
            return 0.0
        free = sorted((c for c in cards if c.used == 0 and c.health), key=lambda c: -c.index)
        score = 0.0
        for r in requests:
            chosen = best_combination(free, r.count)
            if len(chosen) < r.count:
                return 0.0  # it does not fit here: the fit refuses the node
            score += aic_share(chosen)
            free = [c for c in free if c not in chosen]
        return score
