"""Cluster state: every node's cards and a usage ledger updated incrementally.

The ledger holds one :class:`PodAllocation` per pod UID. Adding, removing or replacing a pod adjusts
only the cards it touches; a filter never re-decodes annotations. A pod's usage on a card is its
*collapsed* usage (HAMi semantics): init containers run one after another, so they count as
``max(init)``, app containers as ``sum(app)``, and the card carries ``max(init, app)`` until the init
containers have finished, after which only ``sum(app)`` remains. Placement payloads (vendor state
such as a MIG instance) are not collapsed: they are held for the pod's whole life, init containers'
included.

Namespace quota (:mod:`hami.scheduling.quota`) is fed by the same three mutations: every pod the
ledger holds — bound, or reserved by a decision — is charged to its namespace's quota, and
discharged when it leaves, so quota usage always equals the sum over the ledger's pods.

The per-card arithmetic is the vendor's (:class:`~hami.devices.hooks.CardUsage`, given per vendor
as ``card_usage``; default: counters plus the card payload absorbing placement payloads); the node
totals follow each card's change, so they always equal the sum over the cards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hami.devices.base import Card, Placement
from hami.devices.hooks import CardUse, default_apply_usage
from hami.protocol.node import PairScores
from hami.scheduling.quota import QuotaLedger

# uuid -> what the pod holds on that card
Usage = dict[str, CardUse]
#: one vendor's per-card usage arithmetic: ``(card, use, sign)``
CardUsageFn = Callable[[Card, CardUse, int], None]


@dataclass(slots=True)
class PodAllocation:
    """Which cards a pod holds: per vendor, one tuple of placements per container (init first)."""

    uid: str
    namespace: str
    name: str
    node: str
    containers: Mapping[str, Sequence[tuple[Placement, ...]]]
    init_count: int
    init_released: bool = False
    #: indices of init containers that are native sidecars (``restartPolicy: Always``): they run
    #: beside the app containers and count like them
    sidecars: frozenset[int] = frozenset()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def usage(self) -> Usage:
        """Collapsed per-card usage: ``max(init peak, app sum)``, or app only once init has finished.

        Init containers run one at a time, each beside the native sidecars started before it;
        sidecars and app containers run together for the pod's life.
        """
        init: dict[str, list[int]] = {}
        app: dict[str, list[int]] = {}
        payloads: dict[str, list[Any]] = {}
        for per_container in self.containers.values():
            sidecars_so_far: dict[str, list[int]] = {}
            for ci, placements in enumerate(per_container):
                sequential_init = ci < self.init_count and ci not in self.sidecars
                for p in placements:
                    d = p.device
                    if p.payload is not None:
                        # vendor state (a MIG instance) lives until the pod is torn down, init containers' too
                        payloads.setdefault(d.uuid, []).append(p.payload)
                    if sequential_init:
                        if self.init_released:
                            continue
                        side = sidecars_so_far.get(d.uuid, [0, 0, 0])
                        acc = init.setdefault(d.uuid, [0, 0, 0])
                        acc[0] = max(acc[0], 1 + side[0])
                        acc[1] = max(acc[1], d.usedmem + side[1])
                        acc[2] = max(acc[2], d.usedcores + side[2])
                        continue
                    acc = app.setdefault(d.uuid, [0, 0, 0])
                    acc[0] += 1
                    acc[1] += d.usedmem
                    acc[2] += d.usedcores
                    if ci in self.sidecars:
                        side = sidecars_so_far.setdefault(d.uuid, [0, 0, 0])
                        side[0] += 1
                        side[1] += d.usedmem
                        side[2] += d.usedcores
        out: Usage = {}
        for uuid in init.keys() | app.keys() | payloads.keys():
            i = init.get(uuid, [0, 0, 0])
            a = app.get(uuid, [0, 0, 0])
            out[uuid] = CardUse(
                max(i[0], a[0]), max(i[1], a[1]), max(i[2], a[2]), tuple(payloads.get(uuid, ()))
            )
        return out


@dataclass(slots=True)
class NodeState:
    """One node: its cards (all vendors), pair scores, cordoned UUIDs and running usage totals.

    The usage totals and the node score are maintained by the ledger as pods come and go, so a
    filter reads a node's score in O(1).
    """

    name: str
    cards: list[Card]
    pair_scores: PairScores = field(default_factory=dict)
    cordoned: frozenset[str] = frozenset()
    by_uuid: dict[str, Card] = field(default_factory=dict)
    by_vendor: dict[str, list[Card]] = field(default_factory=dict)
    total_count: int = 0
    total_mem: int = 0
    total_cores: int = 0
    used: int = 0
    usedmem: int = 0
    usedcores: int = 0
    cached_score: float = 0.0

    def __post_init__(self) -> None:
        self.by_uuid = {c.uuid: c for c in self.cards}
        self.by_vendor = {}
        for c in self.cards:
            self.by_vendor.setdefault(c.vendor, []).append(c)
        self.total_count = sum(c.count for c in self.cards)
        self.total_mem = sum(c.totalmem for c in self.cards)
        self.total_cores = sum(c.totalcores for c in self.cards)
        self.refresh_score()

    def refresh_score(self) -> None:
        """HAMi's node score: 10 x (slot + core + memory utilisation) over all cards, before placement."""
        s = 0.0
        if self.total_count:
            s += self.used / self.total_count
        if self.total_cores:
            s += self.usedcores / self.total_cores
        if self.total_mem:
            s += self.usedmem / self.total_mem
        self.cached_score = 10.0 * s

    def score(self) -> float:
        return self.cached_score

    def vendor_cards(self, vendor: str) -> list[Card]:
        return self.by_vendor.get(vendor, [])


class ClusterState:
    """Nodes and the usage ledger. Not thread-safe: the owner serialises mutations."""

    def __init__(self, card_usage: Mapping[str, CardUsageFn] | None = None) -> None:
        #: per-vendor card arithmetic (vendors not named use the shared default); set before pods come
        self.card_usage: dict[str, CardUsageFn] = dict(card_usage or {})
        self.nodes: dict[str, NodeState] = {}
        self.pods: dict[str, PodAllocation] = {}
        self._applied: dict[str, Usage] = {}
        self._by_node: dict[str, set[str]] = {}
        self._largest_mem: dict[str, int] | None = None
        #: namespace quota, charged and discharged with the pods below
        self.quota = QuotaLedger()

    def set_quota(self, namespace: str, name: str, hard: Mapping[str, Any]) -> None:
        """Add or replace one ResourceQuota's limits (a newly limited namespace counts its pods)."""
        self.quota.set_quota(namespace, name, hard, self.pods.values())

    def remove_quota(self, namespace: str, name: str) -> None:
        self.quota.remove_quota(namespace, name)

    def largest_mem(self) -> dict[str, int]:
        """The largest card memory (MiB) per vendor across all nodes (cached until inventory changes)."""
        if self._largest_mem is None:
            out: dict[str, int] = {}
            for node in self.nodes.values():
                for c in node.cards:
                    out[c.vendor] = max(out.get(c.vendor, 0), c.totalmem)
            self._largest_mem = out
        return self._largest_mem

    # --- nodes ------------------------------------------------------------------------------
    def set_node(
        self,
        name: str,
        cards: Iterable[Card],
        *,
        pair_scores: PairScores | None = None,
        cordoned: Iterable[str] = (),
    ) -> NodeState:
        """Add or replace a node's inventory, re-applying the usage of pods already on it."""
        for uid in self._by_node.get(name, set()):
            self._applied.pop(uid, None)
        node = NodeState(
            name=name, cards=list(cards), pair_scores=dict(pair_scores or {}), cordoned=frozenset(cordoned)
        )
        self.nodes[name] = node
        self._largest_mem = None
        for uid in sorted(self._by_node.get(name, set())):
            self._apply(uid, sign=1)
        return node

    def remove_node(self, name: str) -> None:
        """Forget a node's cards; its pods stay in the ledger and re-apply if the node comes back."""
        self.nodes.pop(name, None)
        self._largest_mem = None
        for uid in self._by_node.get(name, set()):
            self._applied.pop(uid, None)

    # --- pods -------------------------------------------------------------------------------
    def add_pod(self, alloc: PodAllocation) -> None:
        """Record (or replace) a pod's allocation and add its usage to its node's cards."""
        self.remove_pod(alloc.uid)
        self.pods[alloc.uid] = alloc
        self._by_node.setdefault(alloc.node, set()).add(alloc.uid)
        self._apply(alloc.uid, sign=1)
        self.quota.charge(alloc)

    def remove_pod(self, uid: str) -> PodAllocation | None:
        """Drop a pod and its usage; returns what it held (None if it held nothing)."""
        alloc = self.pods.get(uid)
        if alloc is None:
            return None
        self._apply(uid, sign=-1)
        self.quota.discharge(uid)
        del self.pods[uid]
        on_node = self._by_node.get(alloc.node)
        if on_node is not None:
            on_node.discard(uid)
            if not on_node:
                del self._by_node[alloc.node]
        return alloc

    def release_init(self, uid: str) -> bool:
        """The pod's init containers finished: shrink its usage to app containers only."""
        alloc = self.pods.get(uid)
        if alloc is None or alloc.init_released or alloc.init_count == 0:
            return False
        self._apply(uid, sign=-1)
        alloc.init_released = True
        self._apply(uid, sign=1)
        self.quota.charge(alloc)
        return True

    @contextmanager
    def without(self, uids: Iterable[str]) -> Iterator[None]:
        """A trial: the pods ``uids`` are off the ledger (cards and quota) inside, restored after.

        The caller must not yield to other tasks inside (nothing else may see the trial)."""
        gone = [alloc for uid in uids if (alloc := self.remove_pod(uid)) is not None]
        try:
            yield
        finally:
            for alloc in gone:
                self.add_pod(alloc)

    def pods_on(self, node: str) -> list[PodAllocation]:
        return [self.pods[uid] for uid in sorted(self._by_node.get(node, set()))]

    # --- internals --------------------------------------------------------------------------
    def _apply(self, uid: str, *, sign: int) -> None:
        alloc = self.pods[uid]
        node = self.nodes.get(alloc.node)
        if sign > 0:
            if node is None:
                return
            usage = alloc.usage()
            applied: Usage = {}
            for uuid, u in usage.items():
                card = node.by_uuid.get(uuid)
                if card is None:
                    continue  # card unknown on this node (yet): counted once it registers
                self._add(node, card, u, 1)
                applied[uuid] = u
            self._applied[uid] = applied
        else:
            done = self._applied.pop(uid, None)
            if done is None or node is None:
                return
            for uuid, u in done.items():
                card = node.by_uuid.get(uuid)
                if card is not None:
                    self._add(node, card, u, -1)

    def _add(self, node: NodeState, card: Card, use: CardUse, sign: int) -> None:
        used, usedmem, usedcores = card.used, card.usedmem, card.usedcores
        self.card_usage.get(card.vendor, default_apply_usage)(card, use, sign)
        node.used += card.used - used
        node.usedmem += card.usedmem - usedmem
        node.usedcores += card.usedcores - usedcores
        node.refresh_score()
