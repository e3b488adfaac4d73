"""The vendor backend protocol and the value types every backend shares.

A backend must know five things about its vendor: which container resources it reads
(``parse_container``), how a node advertises its cards (``node_cards``), which cards a pod may use
(``selector``), which pod annotations record the decision (``decision_annotations`` /
``decode_allocation``) and which node annotation is its bind lock (``lock_key``). Everything else a
vendor may do differently is an optional hook (:mod:`hami.devices.hooks`) with a shared default.

Guarantees:

* Shared modules never name a vendor. Vendor-only state rides in the *payload* slots (HAMi's
  ``CustomInfo``): :attr:`Card.payload` (mutable per-card state such as MIG slices in use; it
  copies itself with the card and absorbs placement payloads), :attr:`Placement.payload` (an
  immutable value such as a MIG allocation) and :attr:`DeviceRequest.payload` (e.g. a template).
* A card without a payload copies in O(slots) with no extra allocation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from hami.protocol.node import PairScores
from hami.protocol.pod import ContainerDevice


class RequestError(ValueError):
    """A container's device request is invalid; the message is fit to show as an admission denial."""

    def __init__(self, *, container: str, resource: str, reason: str) -> None:
        self.container = container
        self.resource = resource
        self.reason = reason
        super().__init__(f"container {container!r}: {resource}: {reason}")


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """What one container asks of one vendor. ``mem_percentage`` None means "not given".

    ``payload`` is the vendor's own part of the request (a template or profile name, ...): shared
    code carries it, only the vendor's hooks read it.
    """

    vendor: str
    count: int
    mem: int = 0
    mem_percentage: int | None = None
    cores: int = 0
    priority: int | None = None
    payload: Any = None

    def mem_for(self, totalmem: int) -> int:
        """Memory (MiB) this request takes on a card with ``totalmem`` MiB."""
        if self.mem_percentage is not None:
            return totalmem * self.mem_percentage // 100
        return self.mem


class CardPayload(Protocol):
    """A card's vendor state (HAMi ``CustomInfo``), mutable: trial placements work on a copy.

    ``add``/``remove`` absorb and release one placement's payload (see :class:`Placement`); the
    shared per-card usage arithmetic calls them for every placement payload on the card.
    """

    def copy(self) -> Self: ...

    def add(self, placement_payload: Any) -> None: ...

    def remove(self, placement_payload: Any) -> None: ...


class Card:
    """One physical card on a node: its inventory and its current usage (mutated by the ledger).

    ``payload`` is the vendor's per-card state (None for most cards); vendors may subclass
    :class:`Card` (with ``__slots__ = ()``) to give that state a typed view.
    """

    __slots__ = (
        "count",
        "health",
        "index",
        "mode",
        "numa",
        "payload",
        "totalcores",
        "totalmem",
        "type",
        "type_lower",
        "used",
        "usedcores",
        "usedmem",
        "uuid",
        "vendor",
    )

    def __init__(
        self,
        *,
        uuid: str,
        vendor: str,
        type: str,
        count: int,
        totalmem: int,
        totalcores: int,
        index: int = 0,
        numa: int = 0,
        mode: str = "hami-core",
        health: bool = True,
        payload: CardPayload | None = None,
    ) -> None:
        self.uuid = uuid
        self.vendor = vendor
        self.type = type
        self.type_lower = type.lower()
        self.count = count
        self.totalmem = totalmem
        self.totalcores = totalcores
        self.index = index
        self.numa = numa
        self.mode = mode
        self.health = health
        self.payload = payload
        self.used = 0
        self.usedmem = 0
        self.usedcores = 0

    def copy(self) -> Self:
        """A scratch copy for trial placements (usage and payload included, independent of this one)."""
        c = object.__new__(type(self))
        for name in Card.__slots__:
            setattr(c, name, getattr(self, name))
        if self.payload is not None:
            c.payload = self.payload.copy()
        return c

    def __repr__(self) -> str:
        return (
            f"Card({self.uuid} {self.type} used={self.used}/{self.count} "
            f"mem={self.usedmem}/{self.totalmem} cores={self.usedcores}/{self.totalcores})"
        )


@dataclass(frozen=True, slots=True)
class NodeCards:
    """A node's cards of one vendor, as its annotations describe them."""

    cards: tuple[Card, ...]
    pair_scores: PairScores = field(default_factory=dict)
    #: registered cards left out, each as ``card 'GPU-x': field 'devmem' ...`` (logged as warnings)
    rejected: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class Placement:
    """One card chosen for one container: the wire record plus the vendor's payload (an immutable
    value, e.g. a MIG allocation; None for most placements). A placement payload is held on its
    card for the pod's whole life, init containers' included.

    Placements are values: a vendor subclass (a typed view of its payload) compares equal to a
    plain :class:`Placement` with the same record and payload.
    """

    device: ContainerDevice
    payload: Any = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Placement):
            return NotImplemented
        return self.device == other.device and self.payload == other.payload

    def __hash__(self) -> int:
        return hash((self.device, self.payload))


@dataclass(frozen=True, slots=True)
class CardSelector:
    """A pod's card filters. Type rules are case-insensitive substrings, UUID rules exact (HAMi semantics).

    Empty tuples mean "no constraint". ``mode`` (from e.g. ``nvidia.com/vgpu-mode``) must contain the
    card's mode when given. ``numa_bind``: every card of one container must share a NUMA node (the
    backend reads it from its own annotation, e.g. ``nvidia.com/numa-bind``).
    """

    use_types: tuple[str, ...] = ()
    nouse_types: tuple[str, ...] = ()
    use_uuids: frozenset[str] = frozenset()
    nouse_uuids: frozenset[str] = frozenset()
    mode: str | None = None
    numa_bind: bool = False

    empty: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        has_rules = self.use_types or self.nouse_types or self.use_uuids or self.nouse_uuids or self.mode
        object.__setattr__(self, "empty", not has_rules)

    def rejection(self, card: Card) -> str | None:
        t = card.type_lower
        if self.use_types and not any(u in t for u in self.use_types):
            return "CardTypeMismatch"
        if self.nouse_types and any(u in t for u in self.nouse_types):
            return "CardTypeMismatch"
        if self.mode is not None and card.mode not in self.mode:
            return "CardTypeMismatch"
        if self.use_uuids and card.uuid not in self.use_uuids:
            return "CardUuidMismatch"
        if card.uuid in self.nouse_uuids:
            return "CardUuidMismatch"
        return None


def split_list(value: str | None, *, lower: bool = False) -> tuple[str, ...]:
    """Split a comma list annotation, dropping blanks."""
    if not value:
        return ()
    items = (v.strip() for v in value.split(","))
    return tuple((v.lower() if lower else v) for v in items if v)


class DeviceBackend(Protocol):
    """What hami needs from a vendor. Implementations are plain classes registered in a registry."""

    @property
    def vendor(self) -> str:
        """HAMi's CommonWord for the vendor (``NVIDIA``); the key of per-vendor maps."""
        ...

    @property
    def resource_names(self) -> tuple[str, ...]:
        """Every container resource this backend manages (for the extender's managedResources)."""
        ...

    @property
    def memory_resource(self) -> str:
        """The container resource holding memory (named in errors about memory)."""
        ...

    @property
    def allocated_key(self) -> str:
        """The pod annotation holding the decision (``hami.io/vgpu-devices-allocated`` for NVIDIA)."""
        ...

    @property
    def to_allocate_key(self) -> str:
        """The pod annotation the device plugin consumes container by container."""
        ...

    @property
    def decision_keys(self) -> tuple[str, ...]:
        """Every pod annotation ``decision_annotations`` may write (stale ones are removed)."""
        ...

    @property
    def lock_key(self) -> str | None:
        """The node annotation used as the bind lock, or None when the vendor takes no lock.

        The value's format is HAMi's unless the backend implements
        :class:`~hami.devices.hooks.NodeLockFormat`."""
        ...

    def parse_container(self, container: Mapping[str, Any]) -> DeviceRequest | None:
        """The container's request for this vendor (None if it asks for none); raises RequestError."""
        ...

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        """The node's cards of this vendor (None if it has none); raises ProtocolError when corrupt."""
        ...

    def selector(self, annotations: Mapping[str, str]) -> CardSelector:
        """The pod's card filters (type, UUID, mode) read once per pod from its annotations."""
        ...

    def decision_annotations(self, containers: Sequence[Sequence[Placement]]) -> dict[str, str]:
        """Pod annotations recording the decision; ``containers`` has one entry per container."""
        ...

    def decode_allocation(self, annotations: Mapping[str, str]) -> list[tuple[Placement, ...]] | None:
        """A running pod's allocation from its annotations (None if it has none for this vendor)."""
        ...
