"""Namespace quota on device memory and cores, with HAMi's semantics.

A namespace's ResourceQuota objects limit ``limits.<memory resource>`` and ``limits.<cores
resource>`` of every configured vendor (``limits.nvidia.com/gpumem``, ``limits.nvidia.com/gpucores``,
``limits.cambricon.com/mlu.smlu.vmemory`` ...). Rules:

* usage is what pods actually hold, read from their placements: a percentage request counts the MiB
  it took on the card chosen, a multi-card request counts every card, a pod's cards count its
  *collapsed* usage (init containers ``max``, app containers ``sum``, as the ledger counts them);
* memory is counted in MiB; a quota's memory figure is multiplied by the vendor's ``memoryFactor``
  (as a container's request is), so ``limits.nvidia.com/gpumem: 8`` with factor 1024 is 8192 MiB;
* an explicit ``0`` blocks any pod asking that resource; a resource the namespace does not limit is
  unlimited; several ResourceQuota objects in one namespace all apply (the smallest limit wins);
* a pod fits when ``used + asked <= limit`` for every limited resource it asks (at the limit passes,
  one MiB over is refused); a pod asking nothing of a resource is never refused for it.

Invariant (the ledger's style, :mod:`hami.scheduling.state`): for every namespace with a limit,
``used[ns]`` is the sum of the charges of the ledger's pods in that namespace — reservations
included, so two pods racing for the last quota cannot both pass. The ledger calls :meth:`charge`
and :meth:`discharge` as it adds and removes pods; a namespace that gets its first limit is counted
from the ledger's pods then. Namespaces without a limit cost one dict lookup per pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hami.devices.base import DeviceBackend, Placement
from hami.devices.hooks import CardUse, QuotaNames, QuotaScoped
from hami.protocol import bodies
from hami.protocol.errors import ProtocolError
from hami.protocol.quantity import parse_int_quantity
from hami.scheduling.requests import PodRequest

LIMIT_PREFIX = "limits."
#: what a pod counts against its namespace's quota: resource name -> MiB or percent
Charge = dict[str, int]


class Chargeable(Protocol):
    """What quota reads of a pod (a :class:`~hami.scheduling.state.PodAllocation`)."""

    @property
    def uid(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def containers(self) -> Mapping[str, Sequence[tuple[Placement, ...]]]: ...

    def usage(self) -> dict[str, CardUse]: ...


@dataclass(frozen=True, slots=True)
class QuotaResource:
    """One limited resource: its vendor, whether it is memory (MiB) or cores, and the memory factor."""

    name: str
    vendor: str
    memory: bool
    factor: int = 1

    @property
    def unit(self) -> str:
        return "MiB" if self.memory else "percent of a card"


@dataclass(frozen=True, slots=True)
class Limit:
    """The effective limit of one resource in one namespace and the ResourceQuota that sets it."""

    value: int
    quota: str


def quota_object(obj: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]]:
    """A ResourceQuota's namespace, name and ``spec.hard`` (empty when missing or not a map)."""
    hard = bodies.spec(obj).get("hard")
    return bodies.namespace(obj) or "default", bodies.name(obj), hard if isinstance(hard, Mapping) else {}


def floor_of(request: PodRequest, resources: Mapping[str, Mapping[bool, str]]) -> tuple[Charge, set[str]]:
    """The least a pod can ever count per quota resource, whatever cards it gets, and which
    resources it asks at all (``resources`` as in :func:`charge_of`).

    The ledger counts per card ``max(init peak, app sum)``; summed over cards that is at least the
    largest init container's total and at least the app containers' (sidecars included) total,
    each container counting ``count x`` its per-card MiB / cores. A percentage of a card's memory
    asks memory but its MiB depend on the card: it counts 0 here (a lower bound), and only an
    explicit limit of 0 can rule it out before a card is chosen.
    """
    init_peak: Charge = {}
    app: Charge = {}
    asked: set[str] = set()
    for c in request.containers:
        per: Charge = {}
        for vendor, req in c.devices.items():
            names = resources.get(vendor) or {}
            mem_name, core_name = names.get(True), names.get(False)
            if mem_name and (req.mem or req.mem_percentage):
                asked.add(mem_name)
                mib = req.count * req.mem if req.mem_percentage is None else 0
                per[mem_name] = per.get(mem_name, 0) + mib
            if core_name and req.cores:
                asked.add(core_name)
                per[core_name] = per.get(core_name, 0) + req.count * req.cores
        for res, v in per.items():
            if c.init and not c.sidecar:
                init_peak[res] = max(init_peak.get(res, 0), v)
            else:
                app[res] = app.get(res, 0) + v
    return {res: max(init_peak.get(res, 0), app.get(res, 0)) for res in asked}, asked


def charge_of(pod: Chargeable, resources: Mapping[str, Mapping[bool, str]]) -> Charge:
    """What a pod holds per quota resource: its collapsed per-card usage summed per vendor.

    ``resources`` maps vendor to ``{True: memory resource, False: cores resource}`` (absent: none).
    """
    vendor_of: dict[str, str] = {}
    for vendor, per_container in pod.containers.items():
        for placements in per_container:
            for p in placements:
                vendor_of[p.device.uuid] = vendor
    out: dict[str, int] = {}
    for uuid, use in pod.usage().items():
        names = resources.get(vendor_of.get(uuid, ""))
        if not names:
            continue
        mem_name = names.get(True)
        if mem_name and use.mem:
            out[mem_name] = out.get(mem_name, 0) + use.mem
        core_name = names.get(False)
        if core_name and use.cores:
            out[core_name] = out.get(core_name, 0) + use.cores
    return out


class QuotaLedger:
    """Per-namespace limits (from ResourceQuota objects) and usage (from the ledger's pods).

    Not thread-safe: the ledger's owner serialises every call, as for the usage ledger.
    """

    def __init__(self) -> None:
        #: resource name -> what it is (only resources of configured vendors are limited)
        self.resources: dict[str, QuotaResource] = {}
        #: vendor -> {True: memory resource, False: cores resource}
        self._by_vendor: dict[str, dict[bool, str]] = {}
        #: namespace -> ResourceQuota name -> resource -> limit (ledger units: MiB, percent)
        self._objects: dict[str, dict[str, dict[str, int]]] = {}
        #: namespace -> resource -> effective limit (the smallest over the namespace's objects)
        self.limits: dict[str, dict[str, Limit]] = {}
        #: namespace -> resource -> used (only namespaces in ``limits``)
        self.used: dict[str, dict[str, int]] = {}
        #: uid -> (namespace, charge) of every counted pod
        self._charged: dict[str, tuple[str, Charge]] = {}
        #: (namespace, ResourceQuota name) -> why entries of it were ignored
        self.errors: dict[tuple[str, str], str] = {}

    # --- configuration ------------------------------------------------------------------------
    def set_vendor(self, vendor: str, names: QuotaNames) -> None:
        """Declare the vendor's quota resources (before any ResourceQuota is read)."""
        per: dict[bool, str] = {}
        for memory, name in ((True, names.memory), (False, names.cores)):
            if name:
                self.resources[name] = QuotaResource(
                    name, vendor, memory, names.memory_factor if memory else 1
                )
                per[memory] = name
        if per:
            self._by_vendor[vendor] = per

    def set_vendors(self, backends: Iterable[DeviceBackend]) -> None:
        """Declare the quota resources of every backend that has some (:class:`QuotaScoped`)."""
        for backend in backends:
            if isinstance(backend, QuotaScoped):
                self.set_vendor(backend.vendor, backend.quota_names)

    # --- ResourceQuota objects ----------------------------------------------------------------
    def set_quota(
        self, namespace: str, name: str, hard: Mapping[str, Any], pods: Iterable[Chargeable] = ()
    ) -> None:
        """Add or replace one ResourceQuota's limits (its ``spec.hard``); ``pods`` are the ledger's
        pods, counted when the namespace gets its first limit. Bad values are ignored and recorded."""
        limits: dict[str, int] = {}
        bad: list[str] = []
        for key, raw in hard.items():
            if not isinstance(key, str) or not key.startswith(LIMIT_PREFIX):
                continue
            res = self.resources.get(key[len(LIMIT_PREFIX) :])
            if res is None:
                continue
            try:
                value = parse_int_quantity(raw, field=key)
            except ProtocolError as exc:
                bad.append(str(exc))
                continue
            limits[res.name] = max(value, 0) * res.factor
        if bad:
            self.errors[(namespace, name)] = "; ".join(bad)
        else:
            self.errors.pop((namespace, name), None)
        objects = self._objects.setdefault(namespace, {})
        if limits:
            objects[name] = limits
        else:
            objects.pop(name, None)
        self._refresh(namespace, pods)

    def remove_quota(self, namespace: str, name: str) -> None:
        self.errors.pop((namespace, name), None)
        objects = self._objects.get(namespace)
        if objects is not None:
            objects.pop(name, None)
        self._refresh(namespace, ())

    def _refresh(self, namespace: str, pods: Iterable[Chargeable]) -> None:
        objects = self._objects.get(namespace) or {}
        effective: dict[str, Limit] = {}
        for qname in sorted(objects):
            for res, value in objects[qname].items():
                cur = effective.get(res)
                if cur is None or value < cur.value:
                    effective[res] = Limit(value, qname)
        if not effective:
            self._objects.pop(namespace, None)
            if self.limits.pop(namespace, None) is not None:
                self.used.pop(namespace, None)
                for uid in [u for u, (ns, _) in self._charged.items() if ns == namespace]:
                    del self._charged[uid]
            return
        newly = namespace not in self.limits
        self.limits[namespace] = effective
        if newly:
            self.used[namespace] = {}
            for pod in pods:
                if pod.namespace == namespace:
                    self.charge(pod)

    # --- usage (called by the ledger) ---------------------------------------------------------
    def charge(self, pod: Chargeable) -> None:
        """Count a pod the ledger now holds (replacing what it counted before)."""
        used = self.used.get(pod.namespace)
        if used is None:
            return  # namespace without quota: nothing to count
        self.discharge(pod.uid)
        charge = charge_of(pod, self._by_vendor)
        for res, v in charge.items():
            used[res] = used.get(res, 0) + v
        self._charged[pod.uid] = (pod.namespace, charge)

    def discharge(self, uid: str) -> None:
        """Stop counting a pod (removed from the ledger, or about to be re-counted)."""
        done = self._charged.pop(uid, None)
        if done is None:
            return
        ns, charge = done
        used = self.used.get(ns)
        if used is None:
            return
        for res, v in charge.items():
            used[res] = used.get(res, 0) - v

    # --- the check ----------------------------------------------------------------------------
    def limited(self, namespace: str) -> bool:
        return namespace in self.limits

    def check(self, pod: Chargeable) -> str | None:
        """Why ``pod`` (not yet counted) would take its namespace over quota, or None when it fits."""
        limits = self.limits.get(pod.namespace)
        if not limits:
            return None
        used = self.used.get(pod.namespace, {})
        asked = charge_of(pod, self._by_vendor)
        for res in sorted(asked):
            limit = limits.get(res)
            if limit is None:
                continue
            a = asked[res]
            u = used.get(res, 0)
            if a > 0 and u + a > limit.value:
                return exceeded(pod.namespace, self.resources[res], limit, u, a)
        return None

    def never_fits(self, namespace: str, request: PodRequest) -> list[str]:
        """Why a pod with ``request`` can never fit its namespace's quota, even with nothing else
        running there (:func:`floor_of` against each limit); empty when it may fit."""
        limits = self.limits.get(namespace)
        if not limits:
            return []
        floor, asked = floor_of(request, self._by_vendor)
        out: list[str] = []
        for res in sorted(asked):
            limit = limits.get(res)
            if limit is None or not (floor[res] > limit.value or limit.value == 0):
                continue
            quota = self.resources[res]
            what = f"{floor[res]} {quota.unit}" if floor[res] else "a percentage of a card's memory"
            out.append(
                f"namespace {namespace}: the pod asks {what} of {LIMIT_PREFIX}{res} but the limit is "
                f"{limit.value} (ResourceQuota {limit.quota}): it can never be scheduled"
            )
        return out


def exceeded(namespace: str, res: QuotaResource, limit: Limit, used: int, asked: int) -> str:
    """``namespace team-a: quota exceeded for limits.nvidia.com/gpumem (ResourceQuota gpu): limit 8192,
    used 6144, asked 3000 MiB``."""
    return (
        f"namespace {namespace}: quota exceeded for {LIMIT_PREFIX}{res.name} (ResourceQuota {limit.quota}): "
        f"limit {limit.value}, used {used}, asked {asked} {res.unit}"
    )
