"""The shared fit mechanism: which cards of a node can serve one container's request, and which are chosen.

Every vendor goes through the same checks, in HAMi's order, each with HAMi's reason name: health,
cordon, the pod's card selector, free slots, mutex; then the backend's extra rejection and its
capacity check (:mod:`hami.devices.hooks`; default: HAMi's memory/core checks). The checks are
applied to *scratch* copies of the node's cards so that later containers of the same pod see earlier
containers' placements. Backend hooks arrive resolved in :attr:`FitRequest.hooks`; when a backend
implements none, every check runs the shared default with no extra indirection.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hami.devices.base import Card, CardSelector, DeviceRequest, Placement
from hami.devices.hooks import (
    CARD_COMPUTE_EXHAUSTED,
    CARD_INSUFFICIENT_CORE,
    CARD_INSUFFICIENT_MEMORY,
    CARD_NOT_HEALTHY,
    DEFAULT_HOOKS,
    EXCLUSIVE_CONFLICT,
    CardUse,
    VendorHooks,
    default_fits,
    default_size,
)
from hami.protocol.node import PairScores
from hami.protocol.weights import ScoringWeights
from hami.scheduling.policy import CardPolicy, order_cards

__all__ = [
    "ALLOCATED_CARDS_INSUFFICIENT",
    "CARD_COMPUTE_EXHAUSTED",
    "CARD_CORDONED",
    "CARD_INSUFFICIENT_CORE",
    "CARD_INSUFFICIENT_MEMORY",
    "CARD_NOT_HEALTHY",
    "CARD_NOT_POD_CARD",
    "CARD_SLOTS_EXHAUSTED",
    "EXCLUSIVE_CONFLICT",
    "NODE_INSUFFICIENT_DEVICE",
    "NUMA_NOT_FIT",
    "FitRequest",
    "fit_container",
    "format_reasons",
    "precheck",
    "rejection",
]

CARD_CORDONED = "CardCordoned"
CARD_SLOTS_EXHAUSTED = "CardTimeSlicingExhausted"
NODE_INSUFFICIENT_DEVICE = "NodeInsufficientDevice"
NUMA_NOT_FIT = "NumaNotFit"
ALLOCATED_CARDS_INSUFFICIENT = "AllocatedCardsInsufficientRequest"
#: HAMi's reason for a card outside the one the pod's earlier containers hold (one-card vendors)
CARD_NOT_POD_CARD = "CardNotFoundCustomFilterRule"


@dataclass(frozen=True, slots=True)
class FitRequest:
    """One container's request of one vendor, with the pod-wide context a fit needs (built once per pod)."""

    request: DeviceRequest
    container_index: int
    selector: CardSelector
    policy: CardPolicy
    weights: ScoringWeights
    numa_bind: bool
    hooks: VendorHooks = DEFAULT_HOOKS
    #: cards the pod's earlier containers took of this vendor, for a :class:`OneCardPod` vendor
    #: (None: no constraint); a card is refused unless it is every one of them
    pinned: frozenset[str] | None = None


def rejection(card: Card, fr: FitRequest, cordoned: frozenset[str]) -> str | None:
    """Why this card cannot take one more slice of the request right now, in HAMi's check order."""
    reason = _card_rejection(card, fr, cordoned)
    if reason is None and fr.pinned is not None and not fr.pinned <= {card.uuid}:
        return CARD_NOT_POD_CARD
    return reason


def _card_rejection(card: Card, fr: FitRequest, cordoned: frozenset[str]) -> str | None:
    if not card.health:
        return fr.hooks.unhealthy
    if cordoned and card.uuid in cordoned:
        return CARD_CORDONED
    if not fr.selector.empty:
        reason = fr.selector.rejection(card)
        if reason is not None:
            return reason
    if card.count <= card.used:
        return CARD_SLOTS_EXHAUSTED
    if fr.policy.mutex and card.used > 0:
        return EXCLUSIVE_CONFLICT
    hooks = fr.hooks
    if hooks.modes is not None and card.mode not in hooks.modes:
        return default_fits(card, fr.request)
    if hooks.reject is not None:
        reason = hooks.reject(card, fr.request)
        if reason is not None:
            return reason
    if hooks.fits is not None:
        return hooks.fits(card, fr.request)
    return default_fits(card, fr.request)


def _take(card: Card, fr: FitRequest, device_index: int) -> Placement:
    hooks = fr.hooks
    size = hooks.size if hooks.size is not None and hooks.on(card) else default_size
    placement = size(card, fr.request, fr.container_index, device_index)
    d = placement.device
    payloads = () if placement.payload is None else (placement.payload,)
    hooks.usage(card, CardUse(1, d.usedmem, d.usedcores, payloads), 1)
    return placement


def _pair_sum(a: Card, others: Sequence[Card], scores: PairScores) -> int:
    row = scores.get(a.uuid, {})
    return sum(row.get(o.uuid, 0) for o in others if o is not a)


def _topology_pick(eligible: list[Card], count: int, scores: PairScores) -> list[Card]:
    if len(eligible) <= count:
        return eligible
    if count == 1:
        # keep the well-connected cards free: take the one least connected to the others
        return [min(eligible, key=lambda c: _pair_sum(c, eligible, scores))]
    best: tuple[Card, ...] | None = None
    best_score = -1
    for combo in itertools.combinations(eligible, count):
        s = sum(scores.get(a.uuid, {}).get(b.uuid, 0) for a, b in itertools.combinations(combo, 2))
        if s > best_score:
            best, best_score = combo, s
    assert best is not None
    return list(best)


def format_reasons(reasons: Mapping[str, int], total: int) -> str:
    """``"3/8 CardInsufficientMemory, 5/8 CardInsufficientCore"`` (sorted, like HAMi's GenReason)."""
    return ", ".join(f"{n}/{total} {r}" for r, n in sorted(reasons.items()))


def _slices(hooks: VendorHooks, card: Card) -> int:
    """How many slices of one request ``card`` may hold (1 unless a MultiSlice hook says more)."""
    n = hooks.card_slices(card)
    return 1 if n is None else n


def _too_few_cards(cards: Sequence[Card], need: int, hooks: VendorHooks) -> bool:
    """More cards asked than the node has, and none of them holds several slices."""
    return need > len(cards) and all(hooks.card_slices(c) is None for c in cards)


def precheck(cards: Sequence[Card], fr: FitRequest, cordoned: frozenset[str]) -> str | None:
    """Read-only test on the node's real cards: the reason the request cannot fit even alone, or None.

    Exact for a pod with one device container; a necessary condition otherwise. It lets a filter
    reject most unfit nodes without copying their cards. One pass, reasons counted as it goes.
    """
    need = fr.request.count
    hooks = fr.hooks
    if need > len(cards) and _too_few_cards(cards, need, hooks):
        return f"{len(cards)}/{need} {NODE_INSUFFICIENT_DEVICE}"
    multi = hooks.slices is not None
    eligible = 0
    reasons: dict[str, int] = {}
    for card in cards:
        r = rejection(card, fr, cordoned)
        if r is None:
            eligible += _slices(hooks, card) if multi else 1
        else:
            reasons[r] = reasons.get(r, 0) + 1
    if eligible >= need:
        return None
    if eligible:
        reasons[ALLOCATED_CARDS_INSUFFICIENT] = eligible
    return format_reasons(reasons, len(cards))


def default_choice(
    ordered: list[Card],
    need: int,
    policy: CardPolicy,
    pair_scores: PairScores,
    hooks: VendorHooks = DEFAULT_HOOKS,
) -> list[Card]:
    """The NVLink topology pick when the policy asks for it and every card holds one slice."""
    if policy.topology_aware and all(hooks.card_slices(c) is None for c in ordered):
        return _topology_pick(ordered, need, pair_scores)
    return ordered


def fit_container(
    cards: list[Card], fr: FitRequest, *, cordoned: frozenset[str], pair_scores: PairScores
) -> tuple[list[Placement] | None, str]:
    """Choose cards for one container on scratch ``cards`` (mutated on success). Returns (placements, reason)."""
    need = fr.request.count
    hooks = fr.hooks
    if need > len(cards) and _too_few_cards(cards, need, hooks):
        return None, f"{len(cards)}/{need} {NODE_INSUFFICIENT_DEVICE}"
    reasons: Counter[str] = Counter()
    eligible: list[Card] = []
    for card in cards:
        r = rejection(card, fr, cordoned)
        if r is None:
            eligible.append(card)
        else:
            reasons[r] += 1
    if not eligible:
        return None, format_reasons(reasons, len(cards))
    ordered = order_cards(eligible, fr.policy, fr.weights)
    if fr.numa_bind:
        groups: dict[int, list[Card]] = {}
        for c in ordered:
            groups.setdefault(c.numa, []).append(c)
        fitting = [g for g in groups.values() if sum(_slices(hooks, c) for c in g) >= need]
        if not fitting:
            reasons[NUMA_NOT_FIT] += len(eligible)
            return None, format_reasons(reasons, len(cards))
        ordered = fitting[0]
    if hooks.choose_request is not None:
        ordered = hooks.choose_request(ordered, fr.request, fr.policy, pair_scores)
    elif hooks.choose is not None:
        ordered = hooks.choose(ordered, need, fr.policy, pair_scores)
    else:
        ordered = default_choice(ordered, need, fr.policy, pair_scores, hooks)
    placements: list[Placement] = []
    for card in ordered:
        while len(placements) < need and rejection(card, fr, cordoned) is None:
            placements.append(_take(card, fr, len(placements)))
            if hooks.card_slices(card) is None:
                break
        if len(placements) == need:
            return placements, ""
    reasons[ALLOCATED_CARDS_INSUFFICIENT] += 1
    return None, format_reasons(reasons, len(cards))
