"""Explanations from the scheduling core, read-only: why a pod waits, and what would still fit.

* :func:`explain_pending` runs :meth:`Scheduler.decide` for a pending pod with ``reserve=False``
  against the current state and groups the per-node reasons: nodes rejected for the same reason
  form one group (the reason strings are the core's own, the ones kube-scheduler shows).
* :func:`fragmentation` answers "how many more pods of a few common sizes would still fit": for
  every card it places such pods one after another on a scratch copy of the card with the core's
  own fit (a one-card scratch state), until one no longer fits. Cards in the same state (type,
  slots, memory, cores, usage) fit the same number, so each distinct state is tried once; the
  number of tries per card is bounded by its free slots.

Neither changes the state it reads: ``decide`` runs without reserving, and the fragmentation
counts run on copies. Both are synchronous: the caller must not yield to other tasks meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from hami.devices.base import Card
from hami.devices.hooks import (
    CARD_COMPUTE_EXHAUSTED,
    CARD_INSUFFICIENT_CORE,
    CARD_INSUFFICIENT_MEMORY,
    EXCLUSIVE_CONFLICT,
    QuotaScoped,
)
from hami.devices.registry import BackendRegistry
from hami.protocol import bodies
from hami.scheduling.decide import NODE_UNREGISTERED, Scheduler
from hami.scheduling.fit import (
    ALLOCATED_CARDS_INSUFFICIENT,
    CARD_CORDONED,
    CARD_NOT_HEALTHY,
    CARD_SLOTS_EXHAUSTED,
    NODE_INSUFFICIENT_DEVICE,
    NUMA_NOT_FIT,
)
from hami.scheduling.state import ClusterState

#: the core's reason codes in plain words (codes from hami.scheduling.fit / hami.devices.hooks /
#: CardSelector, HAMi's names); a reason names ``k/n CODE``: k of the node's n cards said CODE
GLOSSARY = {
    CARD_INSUFFICIENT_MEMORY: "not enough free memory on the card for the asked amount",
    CARD_INSUFFICIENT_CORE: "not enough free compute (cores percent) on the card",
    CARD_COMPUTE_EXHAUSTED: "the card's compute units are all taken",
    EXCLUSIVE_CONFLICT: "the card is shared, and the pod asks for it whole (or holds it whole)",
    CARD_SLOTS_EXHAUSTED: "every slice (time-slicing slot) of the card is taken",
    CARD_NOT_HEALTHY: "the card is reported unhealthy",
    CARD_CORDONED: "the card is cordoned (hami.io/device-cordon)",
    "CardTypeMismatch": "the card's model or mode is not the one the pod's annotations ask for",
    "CardUuidMismatch": "the card is not one the pod's annotations allow",
    NODE_INSUFFICIENT_DEVICE: "the node has fewer cards than the pod asks for",
    NUMA_NOT_FIT: "no single NUMA node holds enough fitting cards (NUMA binding asked)",
    ALLOCATED_CARDS_INSUFFICIENT: "fewer cards fit than the pod asks for",
    NODE_UNREGISTERED: "the node has registered no card of this vendor",
    "CardUnhealthy": "the card is reported unhealthy (Metax sGPU)",
    "CardQosPolicyMismatch": "the shared card is in another QoS policy than the pod's (Metax sGPU)",
    "CardAppClassMismatch": "the card's pods are of another app class: online/offline and plain pods keep apart (Metax sGPU)",
}


def plain_words(reason: str) -> list[str]:
    """The glossary entries of the codes that ``reason`` names, in glossary order."""
    return [text for code, text in GLOSSARY.items() if code in reason]


@dataclass(frozen=True, slots=True)
class NodeGroup:
    """Nodes the core rejected for the same reason; ``meaning``: the reason in plain words."""

    reason: str
    nodes: tuple[str, ...]

    @property
    def meaning(self) -> list[str]:
        return plain_words(self.reason)


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a pending pod waits: ``summary`` (the core's one-line reason) and the node groups.

    ``fits_on`` is set when the pod would fit now (the scheduler has not retried it yet)."""

    summary: str
    groups: tuple[NodeGroup, ...]
    fits_on: str | None = None
    invalid: bool = False


def group_reasons(failed: Mapping[str, str]) -> tuple[NodeGroup, ...]:
    """Per-node reasons grouped by reason, largest group first, nodes sorted."""
    groups: dict[str, list[str]] = {}
    for node, reason in failed.items():
        groups.setdefault(reason, []).append(node)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return tuple(NodeGroup(reason, tuple(sorted(nodes))) for reason, nodes in ordered)


def explain_pending(scheduler: Scheduler, pod: Mapping[str, Any]) -> Explanation:
    """The core's decision for ``pod`` against the current state, without reserving anything."""
    decision = scheduler.decide(pod, reserve=False)
    if decision.node is not None:
        return Explanation(
            summary=f"fits now on node {decision.node}; the scheduler has not retried it yet",
            groups=group_reasons(decision.failed),
            fits_on=decision.node,
        )
    return Explanation(
        summary=decision.reason or "no node fits",
        groups=group_reasons(decision.failed),
        invalid=decision.invalid,
    )


def request_shape(pod: Mapping[str, Any], annotation_domains: tuple[str, ...]) -> bytes:
    """What the core's decision for a pending pod depends on besides the cluster: its namespace
    (quota), its containers' resources (and sidecar flags) and its scheduling annotations. Pods
    of one shape (a Deployment's replicas) get the same explanation."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), Mapping) else {}
    assert isinstance(spec, Mapping)
    containers = [
        [(c.get("resources"), c.get("restartPolicy")) for c in spec.get(kind) or () if isinstance(c, Mapping)]
        for kind in ("initContainers", "containers")
    ]
    annotations = sorted(
        (k, v) for k, v in bodies.annotations(pod).items() if k.startswith(annotation_domains)
    )
    return orjson.dumps(
        [bodies.namespace(pod), containers, annotations], option=orjson.OPT_SORT_KEYS, default=str
    )


class ExplainCache:
    """Explanations per request shape, at most ``limit`` shapes, valid while the cluster
    ``version`` stays the same (the owner bumps it on every watch event): page refreshes reuse
    them, any change recomputes. ``None`` as version: nothing is reused across views."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.version: int | None = None
        self._by_shape: dict[bytes, Explanation] = {}

    def begin(self, version: int | None) -> None:
        """Start a page view of the cluster at ``version``."""
        if version is None or version != self.version:
            self._by_shape.clear()
        self.version = version

    def explain(self, scheduler: Scheduler, pod: Mapping[str, Any], shape: bytes) -> Explanation | None:
        """The pod's explanation (None once ``limit`` other shapes were explained)."""
        found = self._by_shape.get(shape)
        if found is None and len(self._by_shape) < self.limit:
            found = self._by_shape[shape] = explain_pending(scheduler, pod)
        return found


@dataclass(frozen=True, slots=True)
class PodSize:
    """A common pod size: one card with ``memory`` MiB (0: the whole card) and ``cores`` percent."""

    label: str
    memory: int
    cores: int


#: the sizes the overview counts (docs/webui.md)
COMMON_SIZES = (
    PodSize("1 \u00d7 full card", 0, 100),
    PodSize("1 \u00d7 8000 MiB, 30 %", 8000, 30),
    PodSize("1 \u00d7 4000 MiB, 10 %", 4000, 10),
)


def size_pod(registry: BackendRegistry, vendor: str, size: PodSize) -> dict[str, Any] | None:
    """A synthetic one-container pod asking ``vendor`` for ``size`` (None: the vendor has no
    count/memory/cores resources to ask with)."""
    backend = next((b for b in registry if b.vendor == vendor), None)
    if backend is None or not isinstance(backend, QuotaScoped) or not backend.resource_names:
        return None
    names = backend.quota_names
    limits: dict[str, int] = {backend.resource_names[0]: 1}
    if size.memory:
        if not names.memory:
            return None
        limits[names.memory] = max(size.memory // max(names.memory_factor, 1), 1)
    if names.cores:
        limits[names.cores] = size.cores
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "webui-fit", "namespace": "webui-fit", "uid": "webui-fit"},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]},
    }


#: card states whose fit counts are remembered at most (then the cache starts again)
MAX_CACHED = 100_000


def _card_state(card: Card) -> tuple[Any, ...]:
    return (
        card.vendor,
        card.type,
        card.mode,
        card.health,
        card.count,
        card.used,
        card.totalmem,
        card.usedmem,
        card.totalcores,
        card.usedcores,
        card.payload is not None,
    )


class FitCounter:
    """Counts how many pods of one size fit on a card, with the core's fit on scratch copies.

    Results are cached per card state; a card with a vendor payload (MIG) is never cached (its
    payload is part of its state)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._cache: dict[tuple[Any, ...], int] = {}
        self._pods: dict[tuple[str, PodSize], dict[str, Any] | None] = {}

    def count(self, card: Card, size: PodSize) -> int:
        key = (size, *_card_state(card))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        pod_key = (card.vendor, size)
        if pod_key not in self._pods:
            self._pods[pod_key] = size_pod(self.scheduler.registry, card.vendor, size)
        pod = self._pods[pod_key]
        n = 0 if pod is None or not card.health else self._place(card, pod)
        if card.payload is None:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()  # bounded: states come and go as usage changes
            self._cache[key] = n
        return n

    def _place(self, card: Card, pod: dict[str, Any]) -> int:
        src = self.scheduler
        state = ClusterState(card_usage=src.state.card_usage)
        scratch = Scheduler(src.registry, state, node_policy=src.node_policy, gpu_policy=src.gpu_policy)
        state.set_node("scratch", [card.copy()])
        n = 0
        for i in range(max(card.count - card.used, 0)):
            pod["metadata"]["uid"] = f"webui-fit-{i}"
            if scratch.decide(pod).node is None:
                break
            n += 1
        return n


@dataclass(frozen=True, slots=True)
class Fragmentation:
    """Per size: how many more such pods fit in the whole cluster, and on how many cards."""

    size: PodSize
    pods: int
    cards: int


def fragmentation(
    scheduler: Scheduler, sizes: Sequence[PodSize] = COMMON_SIZES, counter: FitCounter | None = None
) -> list[Fragmentation]:
    """How many more pods of each size would fit (each size counted alone, on today's usage).

    Cordoned cards count nothing."""
    counter = counter if counter is not None else FitCounter(scheduler)
    out = []
    for size in sizes:
        pods = cards = 0
        for node in scheduler.state.nodes.values():
            for card in node.cards:
                if card.uuid in node.cordoned:
                    continue
                n = counter.count(card, size)
                pods += n
                cards += 1 if n else 0
        out.append(Fragmentation(size, pods, cards))
    return out
