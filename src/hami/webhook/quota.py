"""The webhook's quota gate: deny at admission a GPU pod that can never fit its namespace's quota.

The extender enforces namespace device quota when it schedules (:mod:`hami.scheduling.quota`),
counting what the namespace's pods hold. Some pods can be refused before that, at creation: those
whose *own* request exceeds a ``limits.<memory|cores resource>`` hard limit, or that ask a resource
whose limit is an explicit ``0``. Such a pod would stay Pending forever; denying it tells the user
at ``kubectl apply`` time, naming the namespace, the resource, the limit and what the pod asks.

Guarantees:

* only what can **never** fit is denied: the pod is measured by :func:`~hami.scheduling.quota.floor_of`
  (init containers the largest, app containers and sidecars summed, every card of a multi-card
  request, memory after ``memoryFactor``, a percentage of a card counted 0 MiB since its MiB depend
  on the card), against the limit alone, never against current usage;
* limits are parsed exactly as the extender parses them (the same :class:`QuotaLedger`, the
  smallest limit over a namespace's ResourceQuota objects wins, unparsable entries are ignored);
* the gate reads ResourceQuotas from an informer cache: no API call on the admission path. Until
  that cache has synced, or when it cannot be read, nothing is denied for quota (the extender still
  enforces it); a quota created after a pod is admitted is the extender's business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from hami.devices.base import RequestError
from hami.devices.registry import BackendRegistry
from hami.scheduling.quota import QuotaLedger, quota_object
from hami.scheduling.requests import pod_requests

log = logging.getLogger(__name__)

#: ``(pod, namespace) -> denial reasons`` (empty: no quota objection)
QuotaCheck = Callable[[Mapping[str, Any], str], list[str]]


class QuotaGate:
    """Device quota limits per namespace, fed by ResourceQuota events; :meth:`denials` checks a pod."""

    def __init__(self, registry: BackendRegistry, *, synced: Callable[[], bool] = lambda: True) -> None:
        self.registry = registry
        self.ledger = QuotaLedger()
        self.ledger.set_vendors(registry)
        #: whether the ResourceQuota cache is complete (nothing is denied before)
        self.synced = synced

    def quota_changed(self, obj: Mapping[str, Any]) -> None:
        ns, name, hard = quota_object(obj)
        self.ledger.set_quota(ns, name, hard)
        error = self.ledger.errors.get((ns, name))
        if error:
            log.warning("webhook: ResourceQuota %s/%s: ignoring entries: %s", ns, name, error)

    def quota_deleted(self, obj: Mapping[str, Any]) -> None:
        ns, name, _ = quota_object(obj)
        self.ledger.remove_quota(ns, name)

    def denials(self, pod: Mapping[str, Any], namespace: str) -> list[str]:
        """Why the pod can never fit ``namespace``'s device quota (empty: it may fit)."""
        if not self.ledger.limited(namespace) or not self.synced():
            return []
        try:
            request = pod_requests(pod, self.registry)
        except RequestError:  # the mutation has already named what is wrong
            return []
        return self.ledger.never_fits(namespace, request)
