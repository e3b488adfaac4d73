"""DRA mode in the extender: the ledger fed with ResourceSlices and ResourceClaims, and the two verbs
kube-scheduler calls for DRA pods (``/dra/filter``, ``/dra/prioritize``).

kube-scheduler calls them only for pods carrying the marker ``hami.io/dra`` (the webhook puts it on
converted pods; the DRA extender entry of :func:`~hami.extender.schedulerconfig.scheduler_configuration`
manages only that resource). Devices are allocated by kube-scheduler's DynamicResources plugin
(first fit within a node) and the pod is bound by kube-scheduler itself (no ``bindVerb``); hami
only narrows and orders the nodes:

* **filter** refuses a node where device-plugin pods hold a card the DRA allocator could pick
  without room in the ledger (:func:`~hami.scheduling.dra.overcommit_reason`), and one where the
  pod's claims would take its namespace over its device quota, checked as for a device-plugin pod
  (:func:`~hami.scheduling.dra.quota_reason`); every other node passes;
* **prioritize** scores the nodes by the pod's node policy (``hami.io/node-scheduler-policy``, else
  the scheduler's default) on the ledger, where DRA claims and device-plugin pods both count
  (:func:`~hami.scheduling.dra.node_scores`); a tie for the best score is broken by name (the
  first gets one point more), and the pod's requests are *assumed* on that best node until its
  claims arrive (kube-scheduler picks it: hami's weight outweighs the in-tree scores), so the next
  pod of a burst sees them instead of an empty cluster
  (:meth:`~hami.scheduling.dra.DraLedger.assume`).

Watch events for slices and claims never raise: a malformed object is logged and leaves the
ledger as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from hami.extender.service import FilterOutcome
from hami.extender.wire import ExtenderArgs
from hami.protocol import bodies, keys
from hami.protocol.errors import ProtocolError
from hami.scheduling.decide import Scheduler
from hami.scheduling.dra import (
    ClaimRequest,
    DraLedger,
    claim_requests,
    node_scores,
    overcommit_reason,
    quota_reason,
)
from hami.scheduling.policy import NODE_POLICIES

log = logging.getLogger(__name__)

#: kube-scheduler's extender score range is 0..MAX_SCORE
MAX_SCORE = 10
#: ``namespace/name`` -> the ResourceClaim from the informer (None when not seen)
ClaimLookup = Callable[[str], "dict[str, Any] | None"]


def pod_claim_names(pod: Mapping[str, Any]) -> list[str] | None:
    """The names of the pod's ResourceClaims (None while one made from a template has no name yet)."""
    generated = {
        s.get("name"): s.get("resourceClaimName")
        for s in bodies.status(pod).get("resourceClaimStatuses") or []
        if isinstance(s, Mapping)
    }
    out: list[str] = []
    for ref in bodies.spec(pod).get("resourceClaims") or []:
        if not isinstance(ref, Mapping):
            continue
        name = ref.get("resourceClaimName") or generated.get(ref.get("name"))
        if not isinstance(name, str) or not name:
            return None
        out.append(name)
    return out


class DraSteering:
    """The DRA half of the extender around a :class:`Scheduler`'s ledger. Not thread-safe (one loop)."""

    def __init__(self, scheduler: Scheduler, claim_lookup: ClaimLookup, *, split: int = 10) -> None:
        self.scheduler = scheduler
        self.ledger = DraLedger(scheduler.state, split=split)
        self.claim_lookup = claim_lookup
        #: slices and claims that could not be read (``kind namespace/name`` -> error)
        self.errors: dict[str, str] = {}

    # --- watch events -------------------------------------------------------------------------
    def _guard(self, what: str, obj: Mapping[str, Any], apply: Callable[[Mapping[str, Any]], None]) -> None:
        key = f"{what} {bodies.object_key(obj)}"
        try:
            apply(obj)
        except ProtocolError as exc:
            self.errors[key] = str(exc)
            log.warning("ignoring %s: %s", key, exc)
            return
        self.errors.pop(key, None)

    def slice_changed(self, slice_: Mapping[str, Any]) -> None:
        self._guard("ResourceSlice", slice_, self.ledger.slice_changed)

    def slice_deleted(self, slice_: Mapping[str, Any]) -> None:
        self.ledger.slice_deleted(slice_)

    def claim_changed(self, claim: Mapping[str, Any]) -> None:
        self._guard("ResourceClaim", claim, self.ledger.claim_changed)

    def claim_deleted(self, claim: Mapping[str, Any]) -> None:
        self.ledger.claim_deleted(claim)

    def node_refreshed(self, node: Mapping[str, Any]) -> None:
        """After the node's registration was read again: slice cards for a node without registered ones."""
        self.ledger.node_refreshed(bodies.name(node))

    # --- verbs --------------------------------------------------------------------------------
    def pod_requests(self, pod: Mapping[str, Any]) -> list[ClaimRequest] | None:
        """What the pod's claims ask of our device class (None: a claim is not known yet)."""
        names = pod_claim_names(pod)
        if names is None:
            return None
        ns = bodies.namespace(pod) or "default"
        out: list[ClaimRequest] = []
        for name in names:
            claim = self.claim_lookup(f"{ns}/{name}")
            if claim is None:
                return None
            try:
                out += claim_requests(claim)
            except ProtocolError as exc:
                log.warning("ResourceClaim %s/%s: %s", ns, name, exc)
                return None
        return out

    def filter(self, args: ExtenderArgs) -> FilterOutcome:
        requests: list[ClaimRequest] | None = None
        looked_up = False
        passed: list[str] = []
        failed: dict[str, str] = {}
        limited = self.scheduler.state.quota.limited(bodies.namespace(args.pod) or "default")
        for node in args.node_names:
            if not looked_up and (limited or self.ledger.has_pods(node)):
                requests, looked_up = self.pod_requests(args.pod), True
            reason = overcommit_reason(self.ledger, node, requests) or quota_reason(
                self.ledger, node, args.pod, requests
            )
            if reason is None:
                passed.append(node)
            else:
                failed[node] = reason
        return FilterOutcome(node_names=passed, failed=failed)

    def prioritize(self, args: ExtenderArgs) -> dict[str, int]:
        policy = bodies.annotations(args.pod).get(keys.NODE_SCHEDULER_POLICY, "").strip().lower()
        if policy not in NODE_POLICIES:
            policy = self.scheduler.node_policy
        self.ledger.settle(bodies.uid(args.pod))  # a retry: its earlier expectation is void
        scores = node_scores(self.scheduler.state, list(args.node_names), policy)
        if not scores:
            return scores
        best = max(scores.values())
        top = sorted(n for n, s in scores.items() if s == best)
        chosen = top[0]
        for n in top[1:]:  # kube-scheduler would break the tie at random: hami breaks it by name
            scores[n] = best - 1 if best == MAX_SCORE else best
        scores[chosen] = min(best + 1, MAX_SCORE)
        requests = self.pod_requests(args.pod)
        if requests:
            ns = bodies.namespace(args.pod) or "default"
            self.ledger.assume(bodies.uid(args.pod), ns, bodies.name(args.pod), chosen, requests)
        return scores

    def pod_gone(self, uid: str) -> None:
        """The pod is deleted or finished: whatever was assumed for it goes."""
        self.ledger.settle(uid)
