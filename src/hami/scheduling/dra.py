"""DRA allocations in the usage ledger: ResourceSlices name the cards, allocated ResourceClaims use them.

Pure bookkeeping over :class:`~hami.scheduling.state.ClusterState`, fed with API objects (no I/O).

* A **ResourceSlice** of our driver maps ``(pool, device)`` to a card: its ``uuid`` attribute, on
  the slice's ``nodeName``. A node whose device plugin registered no cards (a DRA-mode node) gets
  its cards from its slices (``productName``, ``index``, ``numaNode``, capacities ``memory`` in
  MiB and ``cores``); a node that has registered cards keeps them, and claims land on them by UUID
  (a node switching modes, the same card under both paths).
* An **allocated ResourceClaim** of our driver (``status.allocation.devices.results[*]`` with our
  driver) is one ledger allocation, uid ``claim:<claim uid>``, on the node of its devices' pool:
  one slot plus its ``consumedCapacity`` (``memory``, ``cores``) per result; a result without
  consumed capacity holds the whole card, one on a MIG device (``type: mig``, a partition of the
  card its ``uuid`` names) holds that profile's fixed ``memory`` and ``cores``. It goes through
  :meth:`ClusterState.add_pod` / :meth:`~ClusterState.remove_pod`, the same invariant as pods:
  card and node totals and namespace quota always equal the sum over the ledger's entries, pods
  and claims alike.
* A claim whose devices are not in any slice seen yet is *pending* and is counted once the slice
  arrives; a claim's device→card resolution is kept after its slice goes (a plugin that stops
  deletes its slices; the claim still holds the card until it is deallocated or deleted).
* A deallocated (no ``status.allocation``) or deleted claim holds nothing.
* An **assumption** (uid ``assume:<pod uid>``) is what hami expects a DRA pod to take before
  kube-scheduler has written its allocation (it schedules the next pod while the last one's claims
  are still being written): the pod's requests on the node hami scored best, first fit by the
  ledger. It is settled (removed) when an allocated claim reserved for that pod arrives, wherever
  it landed, or when the pod goes; it counts like a claim meanwhile.

Malformed objects raise :class:`~hami.protocol.errors.ProtocolError` naming the field; the caller
logs it and the ledger is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hami.devices.base import Card, Placement
from hami.devices.hooks import CardUse
from hami.protocol import bodies, keys
from hami.protocol.errors import ProtocolError
from hami.protocol.pod import ContainerDevice
from hami.protocol.quantity import parse_quantity
from hami.scheduling.state import ClusterState, NodeState, PodAllocation

__all__ = [
    "ASSUME_PREFIX",
    "CLAIM_PREFIX",
    "ClaimResult",
    "DraLedger",
    "SliceDevice",
    "claim_requests",
    "claim_results",
    "quota_reason",
    "slice_devices",
]

#: ledger uids of claims: ``claim:<uid>`` (pod uids are UUIDs, never this)
CLAIM_PREFIX = "claim:"
#: ledger uids of in-flight DRA pods: ``assume:<pod uid>``
ASSUME_PREFIX = "assume:"
_DRA_PREFIXES = (CLAIM_PREFIX, ASSUME_PREFIX)
_MIB = Decimal(1 << 20)


@dataclass(frozen=True, slots=True)
class SliceDevice:
    """One device of a ResourceSlice, as the ledger reads it."""

    name: str
    uuid: str
    index: int
    numa: int
    product: str
    memory_mib: int
    cores: int
    #: a MIG device (``type: mig``) of the card ``uuid``: it holds its fixed ``memory_mib`` and
    #: ``cores`` of that card when allocated, and is not a card of the node itself
    partition: bool = False


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """One allocated device of a claim: ``memory_mib``/``cores`` None means the whole card."""

    pool: str
    device: str
    memory_mib: int | None
    cores: int | None


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """One ``exactly`` request of a claim for our device class (``memory_mib`` None: whole card), or
    for our MIG class (``mig``: a MIG device each, its profile known only once allocated)."""

    count: int
    memory_mib: int | None
    cores: int | None
    mig: bool = False


def _amount(value: object, where: str, unit: Decimal = Decimal(1)) -> int:
    """A non-negative quantity in ``unit`` (rounded up); raises ProtocolError naming ``where``."""
    try:
        q = parse_quantity(value)
    except (ProtocolError, ValueError) as exc:
        raise ProtocolError(f"{where}: {exc}") from None
    if q < 0:
        raise ProtocolError(f"{where}: {value!r} is negative")
    return math.ceil(q / unit)


def _mib(value: object, where: str) -> int:
    return _amount(value, where, _MIB)


def _attr(attrs: Mapping[str, Any], name: str, kind: str, where: str) -> Any:
    value = attrs.get(name)
    if not isinstance(value, Mapping) or kind not in value:
        raise ProtocolError(f"{where}.attributes[{name}]: missing or not a {kind} attribute")
    return value[kind]


def slice_devices(
    slice_: Mapping[str, Any], driver: str = keys.DRA_DRIVER
) -> tuple[str, str, list[SliceDevice]]:
    """``(pool, node, devices)`` of one of our driver's slices; raises ProtocolError naming the field.

    A slice of another driver, or one not bound to a node, has no devices for us (``("", "", [])``)."""
    spec = bodies.spec(slice_)
    if spec.get("driver") != driver:
        return "", "", []
    node = spec.get("nodeName")
    pool = spec.get("pool")
    pool_name = pool.get("name") if isinstance(pool, Mapping) else None
    if not isinstance(node, str) or not node or not isinstance(pool_name, str) or not pool_name:
        return "", "", []
    raw = spec.get("devices") or []
    if not isinstance(raw, list):
        raise ProtocolError("spec.devices: not a list")
    out: list[SliceDevice] = []
    for i, d in enumerate(raw):
        where = f"spec.devices[{i}]"
        if not isinstance(d, Mapping) or not isinstance(d.get("name"), str):
            raise ProtocolError(f"{where}: not a device with a name")
        attrs = d.get("attributes") or {}
        capacity = d.get("capacity") or {}
        if not isinstance(attrs, Mapping) or not isinstance(capacity, Mapping):
            raise ProtocolError(f"{where}: attributes and capacity must be maps")
        memory = capacity.get(keys.DRA_CAPACITY_MEMORY)
        cores = capacity.get(keys.DRA_CAPACITY_CORES)
        if not isinstance(memory, Mapping) or not isinstance(cores, Mapping):
            raise ProtocolError(
                f"{where}.capacity: needs {keys.DRA_CAPACITY_MEMORY} and {keys.DRA_CAPACITY_CORES}"
            )
        index = _attr(attrs, keys.DRA_ATTR_INDEX, "int", where)
        numa = attrs.get(keys.DRA_ATTR_NUMA_NODE)
        out.append(
            SliceDevice(
                name=d["name"],
                uuid=str(_attr(attrs, keys.DRA_ATTR_UUID, "string", where)),
                index=int(index),
                numa=int(numa.get("int", 0)) if isinstance(numa, Mapping) else 0,
                product=str(_attr(attrs, keys.DRA_ATTR_PRODUCT_NAME, "string", where)),
                memory_mib=_mib(memory.get("value"), f"{where}.capacity.{keys.DRA_CAPACITY_MEMORY}"),
                cores=_amount(cores.get("value"), f"{where}.capacity.{keys.DRA_CAPACITY_CORES}"),
                partition=(attrs.get(keys.DRA_ATTR_TYPE) or {}).get("string") == keys.DRA_TYPE_MIG,
            )
        )
    return pool_name, node, out


def _consumed(consumed: Mapping[str, Any], where: str) -> tuple[int | None, int | None]:
    mem = consumed.get(keys.DRA_CAPACITY_MEMORY)
    cores = consumed.get(keys.DRA_CAPACITY_CORES)
    return (
        None if mem is None else _mib(mem, f"{where}.{keys.DRA_CAPACITY_MEMORY}"),
        None if cores is None else _amount(cores, f"{where}.{keys.DRA_CAPACITY_CORES}"),
    )


def claim_results(claim: Mapping[str, Any], driver: str = keys.DRA_DRIVER) -> list[ClaimResult]:
    """The claim's allocated devices of our driver ([] when not allocated); raises ProtocolError."""
    allocation = bodies.status(claim).get("allocation")
    if not isinstance(allocation, Mapping):
        return []
    devices = allocation.get("devices") or {}
    results = devices.get("results") if isinstance(devices, Mapping) else None
    if not isinstance(results, list):
        return []
    out: list[ClaimResult] = []
    for i, r in enumerate(results):
        where = f"status.allocation.devices.results[{i}]"
        if not isinstance(r, Mapping):
            raise ProtocolError(f"{where}: not an object")
        if r.get("driver") != driver:
            continue
        pool, device = r.get("pool"), r.get("device")
        if not isinstance(pool, str) or not isinstance(device, str):
            raise ProtocolError(f"{where}: pool and device must be strings")
        consumed = r.get("consumedCapacity")
        mem, cores = (
            _consumed(consumed, f"{where}.consumedCapacity")
            if isinstance(consumed, Mapping)
            else (None, None)
        )
        out.append(ClaimResult(pool=pool, device=device, memory_mib=mem, cores=cores))
    return out


def claim_requests(
    claim: Mapping[str, Any],
    device_class: str = keys.DRA_DEVICE_CLASS,
    mig_class: str = keys.DRA_MIG_DEVICE_CLASS,
) -> list[ClaimRequest]:
    """The claim's ``exactly`` requests for our device classes; raises ProtocolError naming the field."""
    devices = bodies.spec(claim).get("devices") or {}
    requests = devices.get("requests") if isinstance(devices, Mapping) else None
    out: list[ClaimRequest] = []
    for i, r in enumerate(requests if isinstance(requests, list) else []):
        exactly = r.get("exactly") if isinstance(r, Mapping) else None
        if not isinstance(exactly, Mapping) or exactly.get("deviceClassName") not in (
            device_class,
            mig_class,
        ):
            continue
        where = f"spec.devices.requests[{i}].exactly"
        count = exactly.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise ProtocolError(f"{where}.count: {count!r} is not a positive integer")
        capacity = exactly.get("capacity") or {}
        wanted = capacity.get("requests") if isinstance(capacity, Mapping) else None
        mem, cores = (
            _consumed(wanted, f"{where}.capacity.requests") if isinstance(wanted, Mapping) else (None, None)
        )
        if exactly.get("deviceClassName") == mig_class:
            out.append(ClaimRequest(count=count, memory_mib=None, cores=None, mig=True))
            continue
        out.append(ClaimRequest(count=count, memory_mib=mem, cores=cores))
    return out


@dataclass(slots=True)
class _Claim:
    namespace: str
    name: str
    results: list[ClaimResult]
    #: the node and per-result card uuid once every result's device is known
    resolved: tuple[str, tuple[str, ...]] | None = None


@dataclass(slots=True)
class DraLedger:
    """Slices and allocated claims of one driver applied to a :class:`ClusterState`. Not thread-safe."""

    state: ClusterState
    vendor: str = keys.VENDOR_NVIDIA
    driver: str = keys.DRA_DRIVER
    #: slots a DRA card offers to hami's slot count (the plugin allows any number of allocations)
    split: int = 10
    #: (pool, device name) -> (node, device)
    devices: dict[tuple[str, str], tuple[str, SliceDevice]] = field(default_factory=dict)
    #: node -> its devices by (pool, device name)
    node_devices: dict[str, dict[tuple[str, str], SliceDevice]] = field(default_factory=dict)
    #: slice name -> (pool, node, device names)
    slices: dict[str, tuple[str, str, tuple[str, ...]]] = field(default_factory=dict)
    claims: dict[str, _Claim] = field(default_factory=dict)
    #: nodes whose cards come from slices (no registered cards): the NodeState this ledger set
    slice_nodes: dict[str, NodeState] = field(default_factory=dict)

    # --- slices -------------------------------------------------------------------------------
    def slice_changed(self, slice_: Mapping[str, Any]) -> None:
        """Add or replace a slice; raises ProtocolError (nothing changed) for a malformed one."""
        pool, node, devices = slice_devices(slice_, self.driver)
        name = bodies.name(slice_)
        old_node = self._drop_slice(name)
        if node:
            for d in devices:
                self.devices[(pool, d.name)] = (node, d)
                self.node_devices.setdefault(node, {})[(pool, d.name)] = d
            self.slices[name] = (pool, node, tuple(d.name for d in devices))
            self.node_refreshed(node, force=True)
            self._resolve_pending()
        if old_node and old_node != node:
            self.node_refreshed(old_node, force=True)

    def slice_deleted(self, slice_: Mapping[str, Any]) -> None:
        node = self._drop_slice(bodies.name(slice_))
        if node:
            self.node_refreshed(node, force=True)

    def _drop_slice(self, name: str) -> str:
        """Forget a slice's devices; returns its node ("" when unknown)."""
        old = self.slices.pop(name, None)
        if old is None:
            return ""
        pool, node, names = old
        on_node = self.node_devices.get(node, {})
        for n in names:
            self.devices.pop((pool, n), None)
            on_node.pop((pool, n), None)
        if not on_node:
            self.node_devices.pop(node, None)
        return node

    def node_cards(self, node: str) -> list[Card]:
        """The node's cards as its slices describe them (index order)."""
        found = sorted(
            (d for d in self.node_devices.get(node, {}).values() if not d.partition), key=lambda d: d.index
        )
        return [
            Card(
                uuid=d.uuid,
                vendor=self.vendor,
                type=d.product,
                count=self.split,
                totalmem=d.memory_mib,
                totalcores=d.cores,
                index=d.index,
                numa=d.numa,
            )
            for d in found
        ]

    def node_refreshed(self, node: str, *, force: bool = False) -> None:
        """Give the node its slice cards unless it has registered cards of its own. Call after the
        node's registration was read again (a no-op when the node still has this ledger's cards)
        and, with ``force``, after its slices changed."""
        current = self.state.nodes.get(node)
        mine = self.slice_nodes.get(node)
        if current is not None and current is not mine:
            self.slice_nodes.pop(node, None)
            return  # registered by a device plugin: its cards win, claims land on them by uuid
        if current is not None and not force:
            return  # still the slice's cards: nothing to read again
        cards = self.node_cards(node)
        if cards:
            self.slice_nodes[node] = self.state.set_node(node, cards)
            return
        if current is not None:
            self.state.remove_node(node)
        self.slice_nodes.pop(node, None)

    # --- claims -------------------------------------------------------------------------------
    def claim_changed(self, claim: Mapping[str, Any]) -> None:
        """Add, replace or drop (deallocated) a claim; raises ProtocolError (nothing changed)."""
        results = claim_results(claim, self.driver)
        uid = bodies.uid(claim)
        if not results:
            self.claim_deleted(claim)
            return
        for ref in bodies.status(claim).get("reservedFor") or []:
            if isinstance(ref, Mapping) and ref.get("resource") == "pods" and isinstance(ref.get("uid"), str):
                self.settle(ref["uid"])  # the pod's real allocation replaces what was assumed
        old = self.claims.get(uid)
        if old is not None and old.results == results:
            return
        self.claim_deleted(claim)
        entry = _Claim(
            namespace=bodies.namespace(claim) or "default", name=bodies.name(claim), results=results
        )
        self.claims[uid] = entry
        self._apply(uid, entry)

    def claim_deleted(self, claim: Mapping[str, Any]) -> None:
        uid = bodies.uid(claim)
        self.claims.pop(uid, None)
        self.state.remove_pod(CLAIM_PREFIX + uid)

    def assume(
        self, pod_uid: str, namespace: str, name: str, node: str, requests: list[ClaimRequest]
    ) -> bool:
        """Expect the pod's ``requests`` on ``node`` (first fit by the ledger, :meth:`first_fit`);
        False when they do not fit there (nothing assumed)."""
        self.settle(pod_uid)
        alloc = self.trial_allocation(pod_uid, namespace, name, node, requests)
        if alloc is None:
            return False
        self.state.add_pod(alloc)
        return True

    def first_fit(self, node: str, requests: list[ClaimRequest]) -> list[Placement] | None:
        """Where kube-scheduler's first fit would put ``requests`` on ``node`` by the ledger: whole
        cards and shares on the first cards with room; a MIG request on a partitioned card with its
        smallest profile (what a MIG device takes at least). None when they do not fit."""
        state = self.state.nodes.get(node)
        if state is None:
            return None
        trial = {c.uuid: [c.used, c.usedmem, c.usedcores] for c in state.cards}
        smallest = self.smallest_partitions(node)
        placements: list[Placement] = []
        for req in requests:
            taken = 0
            for card in state.cards:
                if taken == req.count:
                    break
                ask = _asked(card, req, smallest)
                if ask is None:
                    continue
                mem, cores = ask
                u = trial[card.uuid]
                if u[0] < card.count and u[1] + mem <= card.totalmem and u[2] + cores <= card.totalcores:
                    u[0], u[1], u[2] = u[0] + 1, u[1] + mem, u[2] + cores
                    placements.append(
                        Placement(ContainerDevice(uuid=card.uuid, type="", usedmem=mem, usedcores=cores))
                    )
                    taken += 1
            if taken < req.count:
                return None
        return placements

    def trial_allocation(
        self, pod_uid: str, namespace: str, name: str, node: str, requests: list[ClaimRequest]
    ) -> PodAllocation | None:
        """The pod's ``requests`` on ``node`` by :meth:`first_fit` as an assumption (not added)."""
        placements = self.first_fit(node, requests)
        if placements is None:
            return None
        return PodAllocation(
            uid=ASSUME_PREFIX + pod_uid,
            namespace=namespace,
            name=name,
            node=node,
            containers={self.vendor: [tuple(placements)]},
            init_count=0,
        )

    def smallest_partitions(self, node: str) -> dict[str, tuple[int, int]]:
        """Per card uuid, the (memory, cores) of its smallest MIG device in the node's slices."""
        out: dict[str, tuple[int, int]] = {}
        for d in self.node_devices.get(node, {}).values():
            if d.partition and (d.uuid not in out or (d.memory_mib, d.cores) < out[d.uuid]):
                out[d.uuid] = (d.memory_mib, d.cores)
        return out

    def settle(self, pod_uid: str) -> None:
        """Drop the pod's assumption (its claims arrived, or it is gone)."""
        self.state.remove_pod(ASSUME_PREFIX + pod_uid)

    def pending(self) -> list[str]:
        """Uids of allocated claims whose devices no slice has shown yet."""
        return sorted(uid for uid, c in self.claims.items() if c.resolved is None)

    def _resolve_pending(self) -> None:
        for uid, entry in self.claims.items():
            if entry.resolved is None:
                self._apply(uid, entry)

    def _apply(self, uid: str, entry: _Claim) -> None:
        if entry.resolved is None:
            found = [self.devices.get((r.pool, r.device)) for r in entry.results]
            if any(f is None for f in found):
                return
            nodes = {f[0] for f in found if f is not None}
            if len(nodes) != 1:
                return  # devices of several nodes: not a node-local claim of ours
            entry.resolved = (nodes.pop(), tuple(f[1].uuid for f in found if f is not None))
        node, uuids = entry.resolved
        placements = []
        for r, uuid in zip(entry.results, uuids, strict=True):
            card = self.state.nodes[node].by_uuid.get(uuid) if node in self.state.nodes else None
            _, dev = self.devices.get((r.pool, r.device), (node, None))
            if dev is not None and dev.partition:  # a MIG device holds its profile's share
                placements.append(
                    Placement(
                        ContainerDevice(uuid=uuid, type="", usedmem=dev.memory_mib, usedcores=dev.cores)
                    )
                )
                continue
            total_mem = card.totalmem if card is not None else (dev.memory_mib if dev is not None else 0)
            total_cores = card.totalcores if card is not None else (dev.cores if dev is not None else 100)
            mem = total_mem if r.memory_mib is None else r.memory_mib
            cores = total_cores if r.cores is None else r.cores
            placements.append(Placement(ContainerDevice(uuid=uuid, type="", usedmem=mem, usedcores=cores)))
        self.state.add_pod(
            PodAllocation(
                uid=CLAIM_PREFIX + uid,
                namespace=entry.namespace,
                name=f"resourceclaim/{entry.name}",
                node=node,
                containers={self.vendor: [tuple(placements)]},
                init_count=0,
            )
        )

    # --- views --------------------------------------------------------------------------------
    def claim_usage(self, node: str) -> dict[str, CardUse]:
        """Per card uuid, what allocated DRA claims hold on the node: what kube-scheduler's DRA
        allocator sees at least (the ledger's card totals add device-plugin pods and assumptions)."""
        out: dict[str, list[int]] = {}
        for alloc in self.state.pods_on(node):
            if not alloc.uid.startswith(CLAIM_PREFIX):
                continue
            for uuid, use in alloc.usage().items():
                acc = out.setdefault(uuid, [0, 0, 0])
                acc[0] += use.slots
                acc[1] += use.mem
                acc[2] += use.cores
        return {u: CardUse(v[0], v[1], v[2]) for u, v in out.items()}

    def has_pods(self, node: str) -> bool:
        """Whether device-plugin pods hold cards on the node (a node mid-switch)."""
        return any(not a.uid.startswith(_DRA_PREFIXES) for a in self.state.pods_on(node))


def _asked(card: Card, req: ClaimRequest, smallest: Mapping[str, tuple[int, int]]) -> tuple[int, int] | None:
    """(MiB, cores) one device of ``req`` takes on ``card``, as the slice's request policies give
    it: no memory named is the card's memory, no cores named is 0 (HAMi's ``gpucores`` default); a
    MIG request takes the card's smallest profile (``smallest``, None on a card without MIG devices)."""
    if req.mig:
        return smallest.get(card.uuid)
    mem = card.totalmem if req.memory_mib is None else req.memory_mib
    return mem, 0 if req.cores is None else req.cores


# --- steering DRA pods (the extender's /dra/filter and /dra/prioritize) --------------------------
def overcommit_reason(ledger: DraLedger, node: str, requests: list[ClaimRequest] | None) -> str | None:
    """Why the node must not take a DRA pod with ``requests`` (None: it may).

    kube-scheduler's DRA allocator sees only DRA claims and picks the first device with room. On a
    node where device-plugin pods also hold cards (a node switching modes), a card the allocator
    sees as free may be full in the ledger; the node is refused when *any* card the allocator could
    pick for a request lacks room in the ledger (the allocator's choice cannot be steered within a
    node). ``requests`` None: the pod's claims are not known here yet, refused on such nodes only.
    Nodes without device-plugin pods always pass (the allocator sees everything there)."""
    state = ledger.state.nodes.get(node)
    if state is None or not ledger.has_pods(node):
        return None
    if requests is None:
        return "device-plugin pods hold cards on this node and the pod's ResourceClaims are not known to hami yet"
    claims = ledger.claim_usage(node)
    smallest = ledger.smallest_partitions(node)
    for req in requests:
        for card in state.cards:
            ask = _asked(card, req, smallest)
            if ask is None:
                continue
            mem, cores = ask
            dra = claims.get(card.uuid, CardUse(0, 0, 0))
            allocator_fits = dra.mem + mem <= card.totalmem and dra.cores + cores <= card.totalcores
            ledger_fits = (
                card.used < card.count
                and card.usedmem + mem <= card.totalmem
                and card.usedcores + cores <= card.totalcores
            )
            if allocator_fits and not ledger_fits:
                return (
                    f"card {card.uuid} holds device-plugin pods kube-scheduler's DRA allocator does not see: "
                    f"{mem} MiB and {cores} cores more would over-commit it "
                    f"({card.usedmem}/{card.totalmem} MiB, {card.usedcores}/{card.totalcores} cores in use)"
                )
    return None


def quota_reason(
    ledger: DraLedger, node: str, pod: Mapping[str, Any], requests: list[ClaimRequest] | None
) -> str | None:
    """Why the DRA pod's requests would take its namespace over its device quota on ``node`` (None:
    they fit, or the namespace has no limit). The pod is charged as a device-plugin pod would be,
    on the cards kube-scheduler's first fit would give it by the ledger (a whole card counts its
    memory, a MIG request its card's smallest profile), with its own earlier assumption left out;
    ``requests`` None: its claims are not known to hami yet, refused in a limited namespace (the
    quota cannot be checked; kube-scheduler retries)."""
    namespace = bodies.namespace(pod) or "default"
    quota = ledger.state.quota
    if not quota.limited(namespace):
        return None
    if requests is None:
        return (
            f"namespace {namespace} has a device quota and the pod's ResourceClaims are not known to hami yet"
        )
    uid = bodies.uid(pod)
    with ledger.state.without([ASSUME_PREFIX + uid]):
        alloc = ledger.trial_allocation(uid, namespace, bodies.name(pod), node, requests)
        return None if alloc is None else quota.check(alloc)


def node_scores(state: ClusterState, nodes: list[str], policy: str) -> dict[str, int]:
    """hami's node score for DRA pods, 0..10 (kube-scheduler's extender range), relative to the
    candidates: ``binpack`` gives the fullest node (HAMi's node score: slot + core + memory use over
    all its cards, DRA claims and device-plugin pods alike) 10 and the emptiest 0; ``spread`` the
    reverse; equal nodes score equally. Nodes hami has no cards for score 0."""
    raw = {n: state.nodes[n].score() for n in nodes if n in state.nodes}
    if not raw:
        return dict.fromkeys(nodes, 0)
    low, high = min(raw.values()), max(raw.values())
    out: dict[str, int] = {}
    for n in nodes:
        if n not in raw:
            out[n] = 0
            continue
        rel = 0.5 if high == low else (raw[n] - low) / (high - low)
        out[n] = round(10 * (rel if policy == "binpack" else 1 - rel))
    return out
