"""Metax sGPU's sharing rules (HAMi ``pkg/device/metax/sdevice.go``, ``score.go``): QoS policy
compatibility, online/offline co-location, the card choice and the node score terms.

State lives in payloads: a card carries :class:`SGPUCardState` (its registered QoS policy and
MetaLink zone, and what the pods on it hold); each placement carries an :class:`SGPUHold` (the
pod's app class and the QoS policy it puts the card in), which the card absorbs and releases with
the pod. A request carries an :class:`SGPUAsk` (the pod's annotations the rules read).

The card's QoS policy while pods use it is the one those pods put it in (HAMi keeps the same
in a "jittery QoS" cache until the device plugin reports the switch), else the registered one.

Guarantees: pure; every function leaves its arguments unchanged except ``add``/``remove`` on
the card state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from hami.devices.base import Card
from hami.protocol.keys import METAX_APP_OFFLINE, METAX_APP_ONLINE

__all__ = [
    "CARD_APP_CLASS_MISMATCH",
    "CARD_QOS_POLICY_MISMATCH",
    "CARD_UNHEALTHY",
    "DIRECT_LINK_SCORE",
    "SGPUAsk",
    "SGPUCardState",
    "SGPUHold",
    "app_class_fits",
    "exclusive_score",
    "online_score",
    "prioritize_exclusive",
    "prioritize_online",
    "qos_fits",
]

CARD_UNHEALTHY = "CardUnhealthy"
CARD_QOS_POLICY_MISMATCH = "CardQosPolicyMismatch"
CARD_APP_CLASS_MISMATCH = "CardAppClassMismatch"
#: score of two cards in one MetaLink zone (HAMi ``DirectLinkScore``)
DIRECT_LINK_SCORE = 10


@dataclass(frozen=True, slots=True)
class SGPUAsk:
    """The pod's annotations a request is judged by: app class (``online``/``offline``/""), QoS
    policy ("" when absent: compatible with any card) and whether MetaLink scoring is on."""

    app_class: str = ""
    qos: str = ""
    topology_aware: bool = False

    @property
    def online(self) -> bool:
        return self.app_class == METAX_APP_ONLINE


@dataclass(frozen=True, slots=True)
class SGPUHold:
    """What one placement holds on its card: the pod's app class and the QoS policy it puts the
    card in (None for an online pod, which leaves the policy alone; "" for an exclusive slice)."""

    app_class: str = ""
    qos: str | None = None


def hold_for(ask: SGPUAsk, cores: int) -> SGPUHold:
    """The hold of a slice of ``cores`` percent for a pod asking ``ask`` (HAMi AddResourceUsage)."""
    if ask.online:
        return SGPUHold(app_class=ask.app_class, qos=None)
    return SGPUHold(app_class=ask.app_class, qos="" if cores == 100 else ask.qos)


class SGPUCardState:
    """A card's registered QoS policy and MetaLink zone, and the online/offline pods and QoS
    policies held on it (mutable; trial placements work on a copy)."""

    __slots__ = ("link_zone", "model", "offline", "online", "qos_held", "reported_qos")

    def __init__(self, *, reported_qos: str = "", link_zone: int = 0, model: str = "") -> None:
        self.reported_qos = reported_qos
        self.link_zone = link_zone
        self.model = model
        self.online = 0
        self.offline = 0
        self.qos_held: Counter[str] = Counter()

    def copy(self) -> Self:
        c = type(self)(reported_qos=self.reported_qos, link_zone=self.link_zone, model=self.model)
        c.online, c.offline, c.qos_held = self.online, self.offline, Counter(self.qos_held)
        return c

    def _change(self, hold: Any, sign: int) -> None:
        if not isinstance(hold, SGPUHold):
            return
        if hold.app_class == METAX_APP_ONLINE:
            self.online += sign
        elif hold.app_class == METAX_APP_OFFLINE:
            self.offline += sign
        if hold.qos is not None:
            self.qos_held[hold.qos] += sign
            if self.qos_held[hold.qos] <= 0:
                del self.qos_held[hold.qos]

    def add(self, placement_payload: Any) -> None:
        self._change(placement_payload, 1)

    def remove(self, placement_payload: Any) -> None:
        self._change(placement_payload, -1)

    def qos_policies(self) -> set[str]:
        """The QoS policies the card is in: those its pods put it in, else the registered one."""
        return set(self.qos_held) if self.qos_held else {self.reported_qos}


def state(card: Card) -> SGPUCardState:
    payload = card.payload
    assert isinstance(payload, SGPUCardState), card
    return payload


def qos_fits(card: Card, ask: SGPUAsk, cores: int) -> bool:
    """HAMi checkDeviceQos: an idle card switches to any policy and an exclusive slice needs none;
    otherwise the card's policy must be unset ("") or the pod's."""
    if card.used == 0 or cores == 100:
        return True
    return state(card).qos_policies() <= {"", ask.qos}


def app_class_fits(card: Card, app_class: str) -> bool:
    """HAMi checkAppClass: an idle card takes any pod; online/offline pods share cards only with
    online/offline pods, others only with others; an offline pod never joins an online one."""
    if card.used == 0:
        return True
    s = state(card)
    classed = s.online > 0 or s.offline > 0
    if classed != (app_class in (METAX_APP_ONLINE, METAX_APP_OFFLINE)):
        return False
    return not (s.online > 0 and app_class == METAX_APP_OFFLINE)


def _online_key(card: Card) -> tuple[int, int, int]:
    s = state(card)
    if s.online == 0 and s.offline > 0:
        return (1, s.offline, 0)
    return (0, s.online, s.offline)


def prioritize_online(cards: Sequence[Card], need: int) -> list[Card]:
    """HAMi prioritizeOnlineDevices: fewest online pods first, then fewest offline pods; cards
    with offline pods only come last (fewest first). Stable among equals."""
    return sorted(cards, key=_online_key)[:need]


def prioritize_exclusive(cards: Sequence[Card], need: int) -> list[Card]:
    """HAMi prioritizeExclusiveDevices: all ``need`` cards from the smallest MetaLink zone that has
    enough; else across zones (smallest first), then cards in no zone (``linkZone`` <= 0).
    Zones of equal size in zone order (HAMi leaves that tie to Go's map order)."""
    if len(cards) <= need:
        return list(cards)
    zones: dict[int, list[Card]] = {}
    unlinked: list[Card] = []
    for c in cards:
        zone = state(c).link_zone
        if zone <= 0:
            unlinked.append(c)
        else:
            zones.setdefault(zone, []).append(c)
    linked = [zones[z] for z in sorted(zones, key=lambda z: (len(zones[z]), z))]
    for group in linked:
        if len(group) >= need:
            return group[:need]
    return ([c for g in linked for c in g] + unlinked)[:need]


def _link_score(zones: dict[str, int]) -> int:
    """HAMi's LinkDevices.Score over distinct cards (uuid -> zone): ten per pair in one zone (> 0)."""
    per_zone = Counter(z for z in zones.values() if z != 0)
    return DIRECT_LINK_SCORE * sum(k * (k - 1) // 2 for k in per_zone.values())


def exclusive_score(chosen: Sequence[Card], cards: Sequence[Card]) -> int:
    """HAMi scoreExclusiveDevices: ten times the MetaLink score of the cards taken, less the link
    score the node loses (among its idle cards, pairs split between taken and left)."""
    taken = {c.uuid: state(c).link_zone for c in chosen}
    idle = {c.uuid: state(c).link_zone for c in cards if c.used == 0}
    rest = {u: z for u, z in idle.items() if u not in taken}
    allocated = _link_score(taken)
    loss = _link_score(idle) - allocated - _link_score(rest)
    return 10 * allocated - loss


def online_score(chosen: Sequence[Card]) -> int:
    """HAMi scoreOnlineDevices: per card taken, -100 per offline pod on a card with offline pods
    only, else -20 per online and -2 per offline pod."""
    total = 0
    for card in {c.uuid: c for c in chosen}.values():
        s = state(card)
        if s.offline > 0 and s.online == 0:
            total -= 100 * s.offline
        else:
            total -= 20 * s.online + 2 * s.offline
    return total
