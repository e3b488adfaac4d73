"""Scheduling policies: parsing the policy annotations, card ordering, node ordering.

Card policy tokens (``hami.io/gpu-scheduler-policy``, comma chain allowed): ``binpack`` (most used
card first), ``spread`` (least used first), ``numa`` (lowest NUMA node first), ``topology-aware``
(choose the best-connected set by NVLink pair scores) and ``mutex`` (idle cards only). Node policies
(``hami.io/node-scheduler-policy``): ``binpack`` picks the most used node, ``spread`` the least used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hami.devices.base import Card
from hami.protocol import keys
from hami.protocol.errors import ProtocolError
from hami.protocol.weights import DEFAULT_WEIGHTS, ScoringWeights, decode_scoring_weights

NODE_POLICIES = ("binpack", "spread")
CARD_TOKENS = ("binpack", "spread", "numa", "topology-aware", "mutex")


@dataclass(frozen=True, slots=True)
class CardPolicy:
    """A parsed card policy: sort keys in order, plus the filter flags."""

    sort_keys: tuple[str, ...]
    topology_aware: bool = False
    mutex: bool = False

    @classmethod
    def parse(cls, value: str, *, source: str) -> CardPolicy:
        tokens = [t.strip().lower() for t in value.split(",") if t.strip()]
        if not tokens:
            raise ProtocolError(f"{source}: empty GPU scheduler policy")
        for t in tokens:
            if t not in CARD_TOKENS:
                raise ProtocolError(
                    f"{source}: unknown GPU scheduler policy {t!r} (one of {', '.join(CARD_TOKENS)})"
                )
        sort_keys = tuple(t for t in tokens if t in ("binpack", "spread", "numa"))
        if not any(t in ("binpack", "spread") for t in sort_keys):
            sort_keys = (*sort_keys, "spread")
        return cls(sort_keys=sort_keys, topology_aware="topology-aware" in tokens, mutex="mutex" in tokens)


@dataclass(frozen=True, slots=True)
class PodPolicy:
    node_policy: str
    card_policy: CardPolicy
    weights: ScoringWeights
    numa_bind: bool


def pod_policy(annotations: Mapping[str, str], *, node_default: str, card_default: str) -> PodPolicy:
    """Resolve a pod's policies from its annotations and the defaults; raises ProtocolError on bad values."""
    node_policy = annotations.get(keys.NODE_SCHEDULER_POLICY, "").strip().lower() or node_default
    if node_policy not in NODE_POLICIES:
        raise ProtocolError(
            f"{keys.NODE_SCHEDULER_POLICY}: unknown node policy {node_policy!r} (binpack or spread)"
        )
    card_value = annotations.get(keys.GPU_SCHEDULER_POLICY, "").strip() or card_default
    card_policy = CardPolicy.parse(card_value, source=keys.GPU_SCHEDULER_POLICY)
    weights_value = annotations.get(keys.DEVICE_SCORING_WEIGHTS)
    weights = decode_scoring_weights(weights_value) if weights_value else DEFAULT_WEIGHTS
    # kept for callers of PodPolicy; the decision takes NUMA binding from each backend's selector
    numa_bind = annotations.get(keys.NVIDIA_NUMA_BIND, "").strip().lower() == "true"
    return PodPolicy(node_policy=node_policy, card_policy=card_policy, weights=weights, numa_bind=numa_bind)


def card_score(card: Card, w: ScoringWeights) -> float:
    """HAMi's device score: 10 x weighted (slot + core + memory) utilisation."""
    s = 0.0
    if card.count:
        s += w.slot * card.used / card.count
    if card.totalcores:
        s += w.core * card.usedcores / card.totalcores
    if card.totalmem:
        s += w.memory * card.usedmem / card.totalmem
    return 10.0 * s


def order_cards(cards: Sequence[Card], policy: CardPolicy, weights: ScoringWeights) -> list[Card]:
    """Cards in preference order (best first).

    Ties go to the highest card index, as in HAMi: it sorts its device list (registration order,
    ascending index) with the policy's keys and its fits walk that list from the end, so among
    equal cards the last one registered comes first. Cards with equal keys and index keep that
    reversed registration order (the sort is stable).
    """

    def key(c: Card) -> tuple[float | int | str, ...]:
        parts: list[float | int | str] = []
        for k in policy.sort_keys:
            if k == "binpack":
                parts.append(-card_score(c, weights))
            elif k == "spread":
                parts.append(card_score(c, weights))
            else:
                parts.append(c.numa)
        parts.append(-c.index)
        return tuple(parts)

    return sorted(reversed(cards), key=key)
