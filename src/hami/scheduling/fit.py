"""The shared fit mechanism: which cards of a node can serve one container's request, and which are chosen.

Every vendor goes through the same checks, in HAMi's order, each with HAMi's reason name. The
checks are applied to *scratch* copies of the node's cards so that later containers of the same
pod see earlier containers' placements.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hami.devices.base import Card, CardSelector, DeviceRequest, Placement
from hami.protocol import keys
from hami.protocol.node import MigProfile, PairScores
from hami.protocol.pod import ContainerDevice, MigAllocation
from hami.protocol.weights import ScoringWeights
from hami.scheduling.policy import CardPolicy, order_cards

CARD_NOT_HEALTHY = "CardNotHealth"
CARD_CORDONED = "CardCordoned"
CARD_SLOTS_EXHAUSTED = "CardTimeSlicingExhausted"
EXCLUSIVE_CONFLICT = "ExclusiveDeviceAllocateConflict"
CARD_INSUFFICIENT_MEMORY = "CardInsufficientMemory"
CARD_INSUFFICIENT_CORE = "CardInsufficientCore"
CARD_COMPUTE_EXHAUSTED = "CardComputeUnitsExhausted"
CARD_MIG_INFEASIBLE = "CardMigTopologyInfeasible"
NODE_INSUFFICIENT_DEVICE = "NodeInsufficientDevice"
NUMA_NOT_FIT = "NumaNotFit"
ALLOCATED_CARDS_INSUFFICIENT = "AllocatedCardsInsufficientRequest"


@dataclass(frozen=True, slots=True)
class FitRequest:
    """One container's request of one vendor, with the pod-wide context a fit needs (built once per pod)."""

    request: DeviceRequest
    container_index: int
    selector: CardSelector
    policy: CardPolicy
    weights: ScoringWeights
    numa_bind: bool


def _mig_choice(card: Card, mem: int) -> tuple[MigProfile, int] | None:
    """The smallest profile with enough memory that has a free placement, and that placement's start."""
    profiles = sorted(card.mig_profiles, key=lambda p: (p.memory_mb, p.slice_count, p.name))
    for prof in profiles:
        if prof.memory_mb < mem:
            continue
        placements = sorted(
            prof.placements, key=lambda pl: pl.start, reverse=prof.name.startswith(("1g.", "3g."))
        )
        for pl in placements:
            end = pl.start + pl.size
            if all(end <= s or pl.start >= s + z for s, z in card.mig_in_use):
                return prof, pl.start
    return None


def rejection(card: Card, fr: FitRequest, cordoned: frozenset[str]) -> str | None:
    """Why this card cannot take one more slice of the request right now, in HAMi's check order."""
    req = fr.request
    if not card.health:
        return CARD_NOT_HEALTHY
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
    if card.mode == keys.MODE_MIG:
        return None if _mig_choice(card, req.mem_for(card.totalmem)) else CARD_MIG_INFEASIBLE
    if card.totalmem - card.usedmem < req.mem_for(card.totalmem):
        return CARD_INSUFFICIENT_MEMORY
    if card.totalcores - card.usedcores < req.cores:
        return CARD_INSUFFICIENT_CORE
    if card.totalcores == 100 and req.cores == 100 and card.used > 0:
        return EXCLUSIVE_CONFLICT
    if card.usedcores >= card.totalcores and req.cores == 0:
        return CARD_COMPUTE_EXHAUSTED
    return None


def _take(card: Card, fr: FitRequest, device_index: int) -> Placement:
    req = fr.request
    mem = req.mem_for(card.totalmem)
    cores = req.cores
    mig: MigAllocation | None = None
    if card.mode == keys.MODE_MIG:
        choice = _mig_choice(card, mem)
        assert choice is not None
        prof, start = choice
        mem, cores = prof.memory_mb, prof.core
        mig = MigAllocation(
            container_index=fr.container_index,
            device_index=device_index,
            gpu_uuid=card.uuid,
            profile=prof.name,
            placement_start=start,
            placement_size=prof.slice_count,
        )
        card.mig_in_use.append((start, prof.slice_count))
    card.used += 1
    card.usedmem += mem
    card.usedcores += cores
    return Placement(
        device=ContainerDevice(uuid=card.uuid, type=req.vendor, usedmem=mem, usedcores=cores), mig=mig
    )


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


def precheck(cards: Sequence[Card], fr: FitRequest, cordoned: frozenset[str]) -> str | None:
    """Read-only test on the node's real cards: the reason the request cannot fit even alone, or None.

    Exact for a pod with one device container; a necessary condition otherwise. It lets a filter
    reject most unfit nodes without copying their cards. One pass, reasons counted as it goes.
    """
    need = fr.request.count
    if need > len(cards) and not any(c.mode == keys.MODE_MIG for c in cards):
        return f"{len(cards)}/{need} {NODE_INSUFFICIENT_DEVICE}"
    eligible = 0
    reasons: dict[str, int] = {}
    for card in cards:
        r = rejection(card, fr, cordoned)
        if r is None:
            eligible += max(1, card.count - card.used) if card.mode == keys.MODE_MIG else 1
        else:
            reasons[r] = reasons.get(r, 0) + 1
    if eligible >= need:
        return None
    if eligible:
        reasons[ALLOCATED_CARDS_INSUFFICIENT] = eligible
    return format_reasons(reasons, len(cards))


def fit_container(
    cards: list[Card], fr: FitRequest, *, cordoned: frozenset[str], pair_scores: PairScores
) -> tuple[list[Placement] | None, str]:
    """Choose cards for one container on scratch ``cards`` (mutated on success). Returns (placements, reason)."""
    need = fr.request.count
    if need > len(cards) and not any(c.mode == keys.MODE_MIG for c in cards):
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
        fitting = [g for g in groups.values() if _capacity(g) >= need]
        if not fitting:
            reasons[NUMA_NOT_FIT] += len(eligible)
            return None, format_reasons(reasons, len(cards))
        ordered = fitting[0]
    if fr.policy.topology_aware and all(c.mode != keys.MODE_MIG for c in ordered):
        ordered = _topology_pick(ordered, need, pair_scores)
    placements: list[Placement] = []
    for card in ordered:
        while len(placements) < need and rejection(card, fr, cordoned) is None:
            placements.append(_take(card, fr, len(placements)))
            if card.mode != keys.MODE_MIG:
                break
        if len(placements) == need:
            return placements, ""
    reasons[ALLOCATED_CARDS_INSUFFICIENT] += 1
    return None, format_reasons(reasons, len(cards))


def _capacity(group: list[Card]) -> int:
    """How many slices of the request a group of eligible cards can hold (1 per card, more for MIG)."""
    return sum(max(1, c.count - c.used) if c.mode == keys.MODE_MIG else 1 for c in group)
