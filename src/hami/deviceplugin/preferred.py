"""GetPreferredAllocation policy (pure): which advertised replicas the kubelet should take."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def replica_id(uuid: str, i: int) -> str:
    """Advertised device ID of replica `i` of card `uuid` (HAMi: `<GPU-UUID>-<i>`)."""
    return f"{uuid}-{i}"


def card_of(device_id: str) -> str:
    """Physical card UUID of an advertised replica ID (`GPU-x-3` -> `GPU-x`)."""
    base, sep, suffix = device_id.rpartition("-")
    return base if sep and suffix.isdigit() else device_id


def preferred_allocation(
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    *,
    preferred_cards: Sequence[str] | None = None,
    unhealthy_cards: frozenset[str] = frozenset(),
) -> list[str]:
    """Choose `size` replica IDs from `available`.

    Order of preference: every `must_include` ID; one replica of each card the scheduler chose
    (`preferred_cards`, in order); one replica of each other distinct healthy card, the card
    with the most free replicas first (spreads containers over cards); then anything left.
    Never returns an ID twice or an ID that is not available/required.
    """
    chosen: list[str] = []
    seen: set[str] = set()

    def take(dev: str) -> None:
        if dev not in seen and len(chosen) < size:
            seen.add(dev)
            chosen.append(dev)

    for dev in must_include:
        take(dev)
    free = [d for d in dict.fromkeys(available) if d not in seen]
    free_per_card = Counter(card_of(d) for d in free)
    used_cards = {card_of(d) for d in chosen}

    def first_free_of(card: str) -> str | None:
        return next((d for d in free if d not in seen and card_of(d) == card), None)

    for card in preferred_cards or ():
        if card in used_cards:
            continue
        pick = first_free_of(card)
        if pick is not None:
            take(pick)
            used_cards.add(card)
    order = sorted(
        (c for c in free_per_card if c not in used_cards),
        key=lambda c: (c in unhealthy_cards, -free_per_card[c]),
    )
    for card in order:
        pick = first_free_of(card)
        if pick is not None:
            take(pick)
            used_cards.add(card)
    for dev in free:
        take(dev)
    return chosen
