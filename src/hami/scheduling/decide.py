"""The decision: fit a pod's containers on candidate nodes, pick the node, reserve, describe it.

``Scheduler.decide`` is HAMi's Filter without its costs: node scores come from running totals kept
by the ledger (O(1) per node), nodes are tried best-first and the first one that fits wins, so a
typical decision touches a handful of nodes. Only when nothing fits is every node evaluated, to
give each a reason.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hami.devices.base import Card, DeviceRequest, Placement, RequestError
from hami.devices.hooks import VendorHooks
from hami.devices.registry import BackendRegistry
from hami.protocol import bodies, keys
from hami.protocol.errors import ProtocolError
from hami.protocol.shape import check_node
from hami.scheduling.fit import NODE_INSUFFICIENT_DEVICE, FitRequest, fit_container, precheck
from hami.scheduling.inventory import CardOwners
from hami.scheduling.policy import pod_policy
from hami.scheduling.requests import PodRequest, check_against_largest_card, pod_requests, unmanaged_resources
from hami.scheduling.state import ClusterState, NodeState, PodAllocation

NODE_UNREGISTERED = "node unregistered"
#: ``now`` is in seconds; placed annotations get nanoseconds (HAMi's ``UnixNano``)
NS_PER_S = 1_000_000_000


@dataclass(slots=True)
class Decision:
    """The outcome of scheduling one pod.

    ``node`` is None when the pod cannot be placed; then ``reason`` says why and ``failed`` holds a
    reason per rejected node. ``placements`` maps vendor to one tuple of placements per container.
    """

    pod: str
    node: str | None
    annotations: dict[str, str] = field(default_factory=dict)
    placements: dict[str, list[tuple[Placement, ...]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    invalid: bool = False


def summarize(failed: Mapping[str, str], total: int) -> str:
    """``0/3 nodes are available: 2 nodes (n1, n2): 8/8 CardInsufficientMemory; 1 node (n3): node unregistered``."""
    groups: dict[str, list[str]] = {}
    for node, reason in sorted(failed.items()):
        groups.setdefault(reason, []).append(node)
    parts = []
    for reason, nodes in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        noun = "node" if len(nodes) == 1 else "nodes"
        shown = ", ".join(nodes[:5]) + (", ..." if len(nodes) > 5 else "")
        parts.append(f"{len(nodes)} {noun} ({shown}): {reason}")
    if not parts:
        return f"0/{total} nodes are available"
    return f"0/{total} nodes are available: " + "; ".join(parts)


def pod_key(pod: Mapping[str, Any]) -> tuple[str, str, str]:
    ns = str(bodies.namespace(pod) or "default")
    name = str(bodies.name(pod))
    uid = str(bodies.uid(pod) or f"{ns}/{name}")
    return uid, ns, name


class Scheduler:
    """The pure scheduling core around a :class:`ClusterState` and a backend registry."""

    def __init__(
        self,
        registry: BackendRegistry,
        state: ClusterState | None = None,
        *,
        node_policy: str = "binpack",
        gpu_policy: str = "spread",
    ) -> None:
        self.registry = registry
        if state is None:
            state = ClusterState()
        for vendor, usage in registry.card_usage().items():
            state.card_usage.setdefault(vendor, usage)
        state.quota.set_vendors(registry)
        self.state = state
        self.node_policy = node_policy
        self.gpu_policy = gpu_policy
        self.node_errors: dict[str, str] = {}
        #: per node, the registered cards left out and why (``node n: card 'GPU-x': field ...``)
        self.node_warnings: dict[str, tuple[str, ...]] = {}
        self._owners = CardOwners()

    # --- inventory ---------------------------------------------------------------------------
    def observe_node(self, node: Mapping[str, Any]) -> str | None:
        """Read a Node manifest's registration annotations; returns an error (node marked bad) or None.

        Cards left out (a field out of range, an id another node registered first) are named in
        ``node_warnings[name]``; the node keeps its other cards."""
        meta = node.get("metadata")
        name = str(meta.get("name") or "") if isinstance(meta, Mapping) else ""
        cards: list[Card] = []
        rejected: list[str] = []
        pair_scores: dict[str, dict[str, int]] = {}
        try:
            check_node(node)
            for backend in self.registry:
                found = backend.node_cards(node)
                if found is not None:
                    cards.extend(found.cards)
                    rejected.extend(found.rejected)
                    pair_scores.update(found.pair_scores)
        except ProtocolError as exc:
            error = f"node {name}: {exc}"
            self.node_errors[name] = error
            self.node_warnings.pop(name, None)
            self.forget_node(name, keep_error=True)
            return error
        self.node_errors.pop(name, None)
        cards, duplicates, freed = self._owners.claim(name, node, cards)
        rejected.extend(duplicates)
        if rejected:
            self.node_warnings[name] = tuple(f"node {name}: {r}" for r in rejected)
        else:
            self.node_warnings.pop(name, None)
        if not cards:
            self.state.remove_node(name)
        else:
            cordon = bodies.annotations(node).get(keys.DEVICE_CORDON) or ""
            cordoned = [u.strip() for u in cordon.split(",") if u.strip()]
            self.state.set_node(name, cards, pair_scores=pair_scores, cordoned=cordoned)
        if freed:
            self._reobserve_waiting(name)
        return None

    def forget_node(self, name: str, *, keep_error: bool = False) -> None:
        """The node is gone (or unusable): drop its cards; nodes waiting for its card ids are read again."""
        if not keep_error:
            self.node_errors.pop(name, None)
            self.node_warnings.pop(name, None)
        self.state.remove_node(name)
        if self._owners.release(name):
            self._reobserve_waiting(name)

    def _reobserve_waiting(self, freed_by: str) -> None:
        for waiting in self._owners.waiting():
            if bodies.name(waiting) != freed_by:
                self.observe_node(waiting)

    def allocation_of(self, pod: Mapping[str, Any], node: str) -> PodAllocation | None:
        """A bound pod's allocation from its annotations (None if it has none); raises ProtocolError."""
        uid, ns, name = pod_key(pod)
        annotations = bodies.annotations(pod)
        containers: dict[str, list[tuple[Placement, ...]]] = {}
        for backend in self.registry:
            decoded = backend.decode_allocation(annotations)
            if decoded is not None:
                containers[backend.vendor] = decoded
        if not containers:
            return None
        init = bodies.init_containers(pod)
        init_count = len(init)
        sidecars = frozenset(i for i, c in enumerate(init) if isinstance(c, Mapping) and bodies.is_sidecar(c))
        return PodAllocation(
            uid=uid,
            namespace=ns,
            name=name,
            node=node,
            containers=containers,
            init_count=init_count,
            sidecars=sidecars,
        )

    # --- decisions ---------------------------------------------------------------------------
    def decide(
        self,
        pod: Mapping[str, Any],
        *,
        candidates: Iterable[str] | None = None,
        now: int = 0,
        reserve: bool = True,
        congested: Container[str] = frozenset(),
    ) -> Decision:
        """Schedule one pod. Drops any earlier reservation of the pod first (no stale reservation).

        Nodes in ``congested`` (e.g. with many binds waiting for their node lock) are tried only
        after every other candidate, keeping the policy's order within each group.
        """
        uid, ns, name = pod_key(pod)
        display = f"{ns}/{name}"
        self.state.remove_pod(uid)
        annotations: Mapping[str, str] = bodies.annotations(pod)
        try:
            request = pod_requests(pod, self.registry)
            policy = pod_policy(annotations, node_default=self.node_policy, card_default=self.gpu_policy)
        except (RequestError, ProtocolError) as exc:
            return Decision(pod=display, node=None, reason=str(exc), invalid=True)
        if request.empty:
            reason = "pod requests no managed device"
            unmanaged = unmanaged_resources(pod, self.registry)
            if unmanaged:
                reason += (
                    f" ({', '.join(unmanaged)}: not a resource of any configured backend;"
                    " is its vendor section missing from device-config.yaml?)"
                )
            return Decision(pod=display, node=None, reason=reason, invalid=True)
        try:
            check_against_largest_card(request, self.state.largest_mem(), self.registry)
        except RequestError as exc:
            return Decision(pod=display, node=None, reason=str(exc), invalid=True)
        selectors = {b.vendor: b.selector(annotations) for b in self.registry if b.vendor in request.vendors}
        hooks = {vendor: self.registry.hooks(vendor) for vendor in request.vendors}
        fit_requests = [
            {
                vendor: FitRequest(
                    request=req,
                    container_index=ci,
                    selector=selectors[vendor],
                    policy=policy.card_policy,
                    weights=policy.weights,
                    numa_bind=selectors[vendor].numa_bind,
                    hooks=hooks[vendor],
                )
                for vendor, req in container.devices.items()
            }
            for ci, container in enumerate(request.containers)
        ]

        names = list(candidates) if candidates is not None else list(self.state.nodes)
        failed: dict[str, str] = {}
        known: list[NodeState] = []
        for n in names:
            node = self.state.nodes.get(n)
            if node is None:
                failed[n] = self.node_errors.get(n, NODE_UNREGISTERED)
            else:
                known.append(node)
        sign = -1.0 if policy.node_policy == "binpack" else 1.0
        terms: list[
            tuple[str, Callable[[Sequence[Card], Sequence[DeviceRequest]], float], list[DeviceRequest]]
        ] = []
        for vendor, h in hooks.items():
            if h.score is None and h.policy_score is None:
                continue
            reqs = [c.devices[vendor] for c in request.containers if vendor in c.devices]
            # a term that cannot apply to this pod is skipped on every node
            if h.score_scope is None or h.score_scope(reqs):
                terms.append((vendor, _score_term(h, policy.node_policy), reqs))
        # best-first without sorting everything: heapify is O(n), each pop O(log n), and the
        # first node that fits usually comes after a handful of pops
        if terms:
            heap = [
                (
                    nd.name in congested,
                    sign * (nd.cached_score + sum(f(nd.vendor_cards(v), reqs) for v, f, reqs in terms)),
                    nd.name,
                    nd,
                )
                for nd in known
            ]
        elif congested:
            heap = [(nd.name in congested, sign * nd.cached_score, nd.name, nd) for nd in known]
        else:
            heap = [(False, sign * nd.cached_score, nd.name, nd) for nd in known]
        heapq.heapify(heap)
        quota = self.state.quota if self.state.quota.limited(ns) else None
        while heap:
            node = heapq.heappop(heap)[3]
            placed = self._fit_node(node, request, fit_requests)
            if isinstance(placed, str):
                failed[node.name] = placed
                continue
            alloc = PodAllocation(
                uid=uid,
                namespace=ns,
                name=name,
                node=node.name,
                containers=placed,
                init_count=request.init_count,
                sidecars=request.sidecars,
            )
            if quota is not None:
                # what the pod takes depends on the cards chosen (a percentage of a bigger card is
                # more MiB), so quota is checked per node, after the fit
                over = quota.check(alloc)
                if over is not None:
                    failed[node.name] = over
                    continue
            if reserve:
                self.state.add_pod(alloc)
            out_annotations = {keys.VGPU_NODE: node.name, keys.VGPU_TIME: str(now)}
            for vendor, per_container in placed.items():
                annotate = hooks[vendor].annotate
                assert annotate is not None
                out_annotations.update(annotate(pod, per_container))
                placed_at = hooks[vendor].placed
                if placed_at is not None:
                    out_annotations.update(placed_at(pod, per_container, node.name, now * NS_PER_S))
            return Decision(
                pod=display, node=node.name, annotations=out_annotations, placements=placed, failed=failed
            )
        return Decision(pod=display, node=None, failed=failed, reason=summarize(failed, len(names)))

    def _fit_node(
        self,
        node: NodeState,
        request: PodRequest,
        fit_requests: list[dict[str, FitRequest]],
    ) -> dict[str, list[tuple[Placement, ...]]] | str:
        by_vendor = {v: node.vendor_cards(v) for v in request.vendors}
        for vendor, cards in by_vendor.items():
            if not cards:
                return f"0/0 {vendor} {NODE_INSUFFICIENT_DEVICE}"
        # cheap read-only rejection first: most unfit nodes never get their cards copied
        for per_vendor in fit_requests:
            for vendor, pre in per_vendor.items():
                reason = precheck(by_vendor[vendor], pre, node.cordoned)
                if reason is not None:
                    return reason
        placed: dict[str, list[tuple[Placement, ...]]] = {v: [] for v in request.vendors}
        app_scratch = {v: [c.copy() for c in cards] for v, cards in by_vendor.items()}
        # placement payloads (MIG instances) are created for every container at admission and live
        # until teardown, so what an init container takes is also marked on app_scratch, which
        # later init containers copy: nobody after it reuses them
        for ci, container in enumerate(request.containers):
            # init containers run one at a time: each fits against the node plus the sidecars
            # already started; sidecars and app containers run together, each on top of the others
            sequential = container.init and not container.sidecar
            if sequential:
                scratch = {v: [c.copy() for c in app_scratch[v]] for v in container.devices}
            else:
                scratch = app_scratch
            for vendor in request.vendors:
                fr = fit_requests[ci].get(vendor)
                if fr is None:
                    placed[vendor].append(())
                    continue
                if fr.hooks.one_card:
                    fr = _pinned(fr, placed[vendor])
                chosen, reason = fit_container(
                    scratch[vendor], fr, cordoned=node.cordoned, pair_scores=node.pair_scores
                )
                if chosen is None:
                    return reason
                placed[vendor].append(tuple(chosen))
                if sequential:
                    held = [(p.device.uuid, p.payload) for p in chosen if p.payload is not None]
                    if held:
                        _hold_payloads(app_scratch[vendor], held)
        return placed


def _pinned(fr: FitRequest, earlier: list[tuple[Placement, ...]]) -> FitRequest:
    """``fr`` limited to the cards the pod's earlier containers took (a one-card vendor)."""
    taken = frozenset(p.device.uuid for c in earlier for p in c)
    return dataclasses.replace(fr, pinned=taken) if taken else fr


def _hold_payloads(cards: list[Card], held: list[tuple[str, Any]]) -> None:
    """Mark placement payloads taken by this pod's init containers (held for the pod's life) on scratch cards."""
    for card in cards:
        if card.payload is not None:
            for uuid, payload in held:
                if uuid == card.uuid:
                    card.payload.add(payload)


def _score_term(
    hooks: VendorHooks, node_policy: str
) -> Callable[[Sequence[Card], Sequence[DeviceRequest]], float]:
    """The vendor's node score term for this pod's node policy."""
    if hooks.score is not None:
        return hooks.score
    policy_score = hooks.policy_score
    assert policy_score is not None
    return lambda cards, requests: policy_score(cards, requests, node_policy)
