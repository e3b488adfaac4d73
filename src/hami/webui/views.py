"""Page data: the informer caches, the scheduling core's ledger and live usage, as plain rows.

Every function here is pure (no I/O, no clocks) and reads a :class:`Snapshot`; the server renders
its rows with autoescaping templates. What is shown, and what is deliberately not:

* pods: name, namespace, phase, node, containers' device limits, the cards they hold, the
  scheduling annotations (keys in ``hami.io/`` or a configured vendor's resource domain) — never
  environment values, never ``kubectl.kubernetes.io/last-applied-configuration`` (it can carry a
  whole manifest, env values included), never Secrets (the web UI cannot read them);
* nodes: name, readiness, the registered cards and the core's reading errors.

Allocated figures are the ledger's (what hami placed); "used" figures are the monitors' (what the
programs really hold), absent when no monitor reported them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hami.devices.base import Card
from hami.protocol import bodies
from hami.protocol.errors import ProtocolError
from hami.protocol.quantity import parse_int_quantity
from hami.scheduling.decide import Scheduler
from hami.scheduling.state import PodAllocation
from hami.webui.explain import (
    ExplainCache,
    Explanation,
    FitCounter,
    Fragmentation,
    fragmentation,
    request_shape,
)
from hami.webui.usage import LiveUsage

MiB = 1 << 20
#: annotations never shown even when their key would qualify
HIDDEN_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})
#: the most distinct pending-pod shapes explained per cluster version (each costs one decision over
#: every node: a few ms at 1000 nodes x 8 cards); pods of an explained shape share its explanation
MAX_EXPLAINED = 8


@dataclass(slots=True)
class Snapshot:
    """What one page view reads. ``pods``/``nodes``/``namespaces`` are the informer caches' objects."""

    scheduler: Scheduler
    pods: Iterable[Mapping[str, Any]]
    nodes: Iterable[Mapping[str, Any]]
    usage: LiveUsage
    scheduler_name: str
    namespaces: Iterable[Mapping[str, Any]] = ()
    pod_errors: Mapping[str, str] = field(default_factory=dict)
    fit_counter: FitCounter | None = None
    #: ``namespace/name`` -> pod (an informer's ``get``); None: looked up in ``pods``
    pod_lookup: Callable[[str], Mapping[str, Any] | None] | None = None
    explain_cache: ExplainCache | None = None
    #: changes whenever the caches change (None: unknown, nothing is reused across views)
    version: int | None = None


# --------------------------------------------------------------------------------- helpers
def _pct(part: float, whole: float) -> int:
    return round(100 * part / whole) if whole > 0 else 0


def _ready(node: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in bodies.conditions(node))


def _managed_domains(scheduler: Scheduler) -> tuple[str, ...]:
    domains = {"hami.io/"}
    for name in scheduler.registry.resource_names():
        if "/" in name:
            domains.add(name.split("/", 1)[0] + "/")
    return tuple(sorted(domains))


def shown_annotations(pod: Mapping[str, Any], domains: tuple[str, ...]) -> list[tuple[str, str]]:
    """The pod's scheduling annotations (managed domains only; never the last applied manifest)."""
    return sorted(
        (k, v)
        for k, v in bodies.annotations(pod).items()
        if isinstance(k, str) and k.startswith(domains) and k not in HIDDEN_ANNOTATIONS
    )


def container_names(pod: Mapping[str, Any] | None) -> list[str]:
    """Container names in the ledger's order: init containers first, then app containers."""
    if pod is None:
        return []
    return [str(c.get("name", "?")) for c in (*bodies.init_containers(pod), *bodies.app_containers(pod))]


def device_limits(pod: Mapping[str, Any], resource_names: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(container, resource, value)`` of every managed resource in the containers' limits."""
    out = []
    managed = set(resource_names)
    for _, c in bodies.all_containers(pod):
        res = c.get("resources")
        limits = res.get("limits") if isinstance(res, Mapping) else None
        if not isinstance(limits, Mapping):
            continue
        for k, v in sorted(limits.items()):
            if k in managed:
                out.append((str(c.get("name", "?")), str(k), _quantity(v)))
    return out


def _quantity(value: Any) -> str:
    """A device quantity as a plain number (the API server stores ``8000`` as ``8k``)."""
    try:
        return str(parse_int_quantity(value, field="limit"))
    except ProtocolError:
        return str(value)


def paginate(rows: Sequence[Any], page: int, per_page: int) -> tuple[Sequence[Any], int, int]:
    """``(rows of the page, page, pages)``; an out-of-range page is clamped."""
    pages = max((len(rows) + per_page - 1) // per_page, 1)
    page = min(max(page, 1), pages)
    return rows[(page - 1) * per_page : page * per_page], page, pages


def matches(query: str, *texts: str) -> bool:
    q = query.lower()
    return not q or any(q in t.lower() for t in texts)


# --------------------------------------------------------------------------------- cards
@dataclass(slots=True)
class Slice:
    namespace: str
    pod: str
    container: str
    memory_mib: int
    cores: int
    used_bytes: int | None
    util: float | None


@dataclass(slots=True, kw_only=True)
class Capacity:
    """Slots, memory (MiB) and cores allocated out of a total, and memory really used (bytes)."""

    slots_used: int = 0
    slots: int = 0
    mem_alloc: int = 0
    mem_total: int = 0
    cores_alloc: int = 0
    cores_total: int = 0
    used_bytes: int | None = None

    @property
    def mem_alloc_pct(self) -> int:
        return _pct(self.mem_alloc, self.mem_total)

    @property
    def used_pct(self) -> int | None:
        return None if self.used_bytes is None else _pct(self.used_bytes / MiB, self.mem_total)


@dataclass(slots=True, kw_only=True)
class CardRow(Capacity):
    node: str
    uuid: str
    index: int
    type: str
    vendor: str
    health: bool
    cordoned: bool
    util: float | None
    slices: list[Slice] = field(default_factory=list)


def _slices(
    allocs: Iterable[PodAllocation], pods: Callable[[str], Mapping[str, Any] | None], usage: LiveUsage
) -> dict[str, list[Slice]]:
    out: dict[str, list[Slice]] = {}
    for alloc in allocs:
        names = container_names(pods(alloc.key))
        for per_container in alloc.containers.values():
            for ci, placements in enumerate(per_container):
                cname = names[ci] if ci < len(names) else f"#{ci}"
                for p in placements:
                    d = p.device
                    live = usage.container(alloc.namespace, alloc.name, cname, d.uuid)
                    out.setdefault(d.uuid, []).append(
                        Slice(
                            alloc.namespace,
                            alloc.name,
                            cname,
                            d.usedmem,
                            d.usedcores,
                            live.memory_bytes if live else None,
                            live.util_percent if live else None,
                        )
                    )
    return out


def _card_row(node: str, card: Card, cordoned: frozenset[str], usage: LiveUsage) -> CardRow:
    host = usage.card(card.uuid)
    return CardRow(
        node=node,
        uuid=card.uuid,
        index=card.index,
        type=card.type,
        vendor=card.vendor,
        health=card.health,
        cordoned=card.uuid in cordoned,
        slots_used=card.used,
        slots=card.count,
        mem_alloc=card.usedmem,
        mem_total=card.totalmem,
        cores_alloc=card.usedcores,
        cores_total=card.totalcores,
        used_bytes=host.memory_bytes if host else None,
        util=host.util_percent if host else None,
    )


def card_entries(snap: Snapshot, query: str = "") -> list[tuple[str, Card]]:
    """``(node, card)`` of every card (sorted by node, index) whose node, UUID, model or a pod
    holding a slice of it matches ``query``. Cheap: rows are built only for the page shown."""
    state = snap.scheduler.state
    holders: dict[str, list[str]] = {}
    if query:
        for alloc in state.pods.values():
            for uuid in alloc.usage():
                holders.setdefault(uuid, []).append(f"{alloc.namespace}/{alloc.name}")
    out = []
    for name in sorted(state.nodes):
        for card in sorted(state.nodes[name].cards, key=lambda c: (c.index, c.uuid)):
            if matches(query, name, card.uuid, card.type, *holders.get(card.uuid, ())):
                out.append((name, card))
    return out


def card_rows(
    snap: Snapshot, entries: Iterable[tuple[str, Card]], pod_lookup: Callable[[str], Mapping[str, Any] | None]
) -> list[CardRow]:
    """The rows of ``entries`` (from :func:`card_entries`), with the slices pods hold on each card."""
    state = snap.scheduler.state
    slices_by_node: dict[str, dict[str, list[Slice]]] = {}
    rows = []
    for name, card in entries:
        if name not in slices_by_node:
            slices_by_node[name] = _slices(state.pods_on(name), pod_lookup, snap.usage)
        row = _card_row(name, card, state.nodes[name].cordoned, snap.usage)
        row.slices = slices_by_node[name].get(card.uuid, [])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------- nodes
@dataclass(slots=True, kw_only=True)
class NodeRow(Capacity):
    name: str
    ready: bool
    cards: int
    models: str
    pods: int
    problems: list[str]


def node_rows(snap: Snapshot) -> list[NodeRow]:
    sched = snap.scheduler
    state = sched.state
    rows = []
    for node in sorted(snap.nodes, key=bodies.name):
        name = bodies.name(node)
        ns = state.nodes.get(name)
        problems = []
        if name in sched.node_errors:
            problems.append(sched.node_errors[name])
        problems.extend(sched.node_warnings.get(name, ()))
        cards = ns.cards if ns else []
        if not cards and not problems:
            continue  # a node without accelerators: not this UI's business
        used = [u.memory_bytes for c in cards if (u := snap.usage.card(c.uuid)) is not None]
        rows.append(
            NodeRow(
                name=name,
                ready=_ready(node),
                cards=len(cards),
                models=", ".join(sorted({c.type for c in cards})),
                slots_used=ns.used if ns else 0,
                slots=ns.total_count if ns else 0,
                mem_alloc=ns.usedmem if ns else 0,
                mem_total=ns.total_mem if ns else 0,
                cores_alloc=ns.usedcores if ns else 0,
                cores_total=ns.total_cores if ns else 0,
                used_bytes=sum(used) if used else None,
                pods=len(state.pods_on(name)) if ns else 0,
                problems=problems,
            )
        )
    return rows


# --------------------------------------------------------------------------------- overview
@dataclass(slots=True, kw_only=True)
class ModelRow(Capacity):
    type: str
    vendor: str
    nodes: int = 0
    cards: int = 0
    util: float | None = None

    @property
    def cores_alloc_pct(self) -> int:
        return _pct(self.cores_alloc, self.cores_total)


@dataclass(slots=True)
class Overview:
    models: list[ModelRow]
    fragmentation: list[Fragmentation]
    nodes: int
    cards: int
    running: int
    pending: int
    problems: int


def overview(snap: Snapshot, pending: int) -> Overview:
    state = snap.scheduler.state
    by_model: dict[tuple[str, str], ModelRow] = {}
    node_sets: dict[tuple[str, str], set[str]] = {}
    utils: dict[tuple[str, str], list[float]] = {}
    for name, node in state.nodes.items():
        for c in node.cards:
            key = (c.type, c.vendor)
            row = by_model.get(key)
            if row is None:
                row = by_model[key] = ModelRow(type=c.type, vendor=c.vendor)
            node_sets.setdefault(key, set()).add(name)
            row.cards += 1
            row.mem_total += c.totalmem
            row.mem_alloc += c.usedmem
            row.cores_total += c.totalcores
            row.cores_alloc += c.usedcores
            host = snap.usage.card(c.uuid)
            if host is not None:
                row.used_bytes = (row.used_bytes or 0) + host.memory_bytes
                utils.setdefault(key, []).append(host.util_percent)
    for key, row in by_model.items():
        row.nodes = len(node_sets[key])
        if key in utils:
            # a card no sample names holds no running program: it counts as idle
            row.util = sum(utils[key]) / row.cards
    sched = snap.scheduler
    return Overview(
        models=sorted(by_model.values(), key=lambda r: (r.vendor, r.type)),
        fragmentation=fragmentation(sched, counter=snap.fit_counter),
        nodes=len(state.nodes),
        cards=sum(len(n.cards) for n in state.nodes.values()),
        running=len(state.pods),
        pending=pending,
        problems=len(sched.node_errors) + len(sched.node_warnings) + len(snap.pod_errors),
    )


# --------------------------------------------------------------------------------- workloads
@dataclass(slots=True)
class PodRow:
    namespace: str
    name: str
    phase: str
    node: str
    limits: list[tuple[str, str, str]]
    cards: list[str]
    mem_alloc: int
    cores_alloc: int
    used_bytes: int | None
    annotations: list[tuple[str, str]]
    explanation: Explanation | None = None
    #: kube-scheduler's own message on the pod (condition PodScheduled=False)
    condition: str = ""
    error: str = ""


def _is_pending(pod: Mapping[str, Any], scheduler_name: str) -> bool:
    return (
        not bodies.node_name(pod)
        and bodies.phase(pod) in ("Pending", "")
        and bodies.spec(pod).get("schedulerName") == scheduler_name
        and not bodies.is_deleting(pod)
    )


def _unscheduled_message(pod: Mapping[str, Any]) -> str:
    for c in bodies.conditions(pod):
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return str(c.get("message") or c.get("reason") or "")
    return ""


def pending_pods(snap: Snapshot) -> list[Mapping[str, Any]]:
    return sorted(
        (p for p in snap.pods if _is_pending(p, snap.scheduler_name)), key=lambda p: bodies.pod_key(p)
    )


def running_allocations(snap: Snapshot, query: str = "") -> list[PodAllocation]:
    """The ledger's pods whose namespace, name or node matches ``query``, sorted."""
    allocs = (a for a in snap.scheduler.state.pods.values() if matches(query, a.namespace, a.name, a.node))
    return sorted(allocs, key=lambda a: (a.namespace, a.name))


def running_rows(snap: Snapshot, allocs: Iterable[PodAllocation]) -> list[PodRow]:
    """Rows of pods holding cards (build them only for the rows shown)."""
    sched = snap.scheduler
    domains = _managed_domains(sched)
    resources = sched.registry.resource_names()
    by_uid = {bodies.uid(p): p for p in snap.pods}
    running = []
    for alloc in allocs:
        pod = by_uid.get(alloc.uid)
        usage = alloc.usage()
        running.append(
            PodRow(
                namespace=alloc.namespace,
                name=alloc.name,
                phase=bodies.phase(pod) if pod else "",
                node=alloc.node,
                limits=device_limits(pod, resources) if pod else [],
                cards=sorted(usage),
                mem_alloc=sum(u.mem for u in usage.values()),
                cores_alloc=sum(u.cores for u in usage.values()),
                used_bytes=snap.usage.pod_memory(alloc.namespace, alloc.name),
                annotations=shown_annotations(pod, domains) if pod else [],
                error=snap.pod_errors.get(alloc.uid, ""),
            )
        )
    return running


def pending_rows(snap: Snapshot, *, explain: bool = True) -> list[PodRow]:
    """hami's pods waiting for a node, with the core's explanation (up to :data:`MAX_EXPLAINED`
    distinct shapes)."""
    sched = snap.scheduler
    domains = _managed_domains(sched)
    resources = sched.registry.resource_names()
    pending = []
    cache = snap.explain_cache if snap.explain_cache is not None else ExplainCache(MAX_EXPLAINED)
    cache.begin(snap.version)
    for pod in pending_pods(snap):
        explanation = cache.explain(sched, pod, request_shape(pod, domains)) if explain else None
        pending.append(
            PodRow(
                namespace=bodies.namespace(pod) or "default",
                name=bodies.name(pod),
                phase=bodies.phase(pod),
                node="",
                limits=device_limits(pod, resources),
                cards=[],
                mem_alloc=0,
                cores_alloc=0,
                used_bytes=None,
                annotations=shown_annotations(pod, domains),
                explanation=explanation,
                condition=_unscheduled_message(pod),
            )
        )
    return pending


# --------------------------------------------------------------------------------- namespaces
@dataclass(slots=True)
class QuotaRow:
    resource: str
    limit: int
    used: int
    quota: str
    unit: str

    @property
    def pct(self) -> int:
        return _pct(self.used, self.limit)


@dataclass(slots=True)
class NamespaceRow:
    name: str
    pods: int
    pending: int
    mem_alloc: int
    cores_alloc: int
    used_bytes: int | None
    quota: list[QuotaRow]


def namespace_rows(snap: Snapshot) -> list[NamespaceRow]:
    state = snap.scheduler.state
    rows: dict[str, NamespaceRow] = {}

    def row(ns: str) -> NamespaceRow:
        if ns not in rows:
            rows[ns] = NamespaceRow(ns, 0, 0, 0, 0, None, [])
        return rows[ns]

    for alloc in state.pods.values():
        r = row(alloc.namespace)
        r.pods += 1
        for u in alloc.usage().values():
            r.mem_alloc += u.mem
            r.cores_alloc += u.cores
    for pod in pending_pods(snap):
        row(bodies.namespace(pod) or "default").pending += 1
    for (ns, _pod, _c, _uuid), use in snap.usage.containers.items():
        if ns in rows:
            rows[ns].used_bytes = (rows[ns].used_bytes or 0) + use.memory_bytes
    quota = state.quota
    for ns, limits in quota.limits.items():
        r = row(ns)
        used = quota.used.get(ns, {})
        for res, limit in sorted(limits.items()):
            info = quota.resources[res]
            r.quota.append(QuotaRow(f"limits.{res}", limit.value, used.get(res, 0), limit.quota, info.unit))
    return sorted(rows.values(), key=lambda r: r.name)


__all__ = [
    "CardRow",
    "ModelRow",
    "NamespaceRow",
    "NodeRow",
    "Overview",
    "PodRow",
    "Snapshot",
    "card_entries",
    "card_rows",
    "namespace_rows",
    "node_rows",
    "overview",
    "paginate",
    "pending_rows",
    "running_rows",
]
