"""Feeding the scheduling core from watch events: which pod updates change the usage ledger.

Rules (they fix HAMi's phantom reservations, finding F2):

* a *bound* pod (``spec.nodeName`` set) carrying an allocation annotation counts on its node —
  only if hami scheduled it (``spec.schedulerName``), so forged annotations elsewhere count nothing;
* an *unbound* pod counts only while this process holds a reservation for it (it was just
  decided: assumed in :class:`~hami.extender.reservations.Reservations`); annotations left on an
  unbound pod by an earlier decision are ignored;
* a pod event carrying ``hami.io/bind-phase`` success or failed ends the pod's place in flight on
  its node (its allocation finished);
* a pod in phase Succeeded/Failed, or deleted, holds nothing; a deleted pod's uid is remembered
  (the last ``MAX_TOMBSTONES``), so a decision kube-scheduler asks for after the deletion reached
  this process reserves nothing — it would otherwise hold the card until the reservation TTL;
* once every init container has exited 0, only the app containers' usage remains;
* a ResourceQuota's ``spec.hard`` sets its namespace's device limits (``limits.<memory|cores
  resource>``); a deleted one lifts them;
* a node's inventory is read again whenever its registration annotations or its allocatable
  resources change (a backend drops the cards of a node whose device plugin kubelet lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from hami.extender.reservations import Reservations
from hami.protocol import bodies, keys
from hami.protocol.errors import ProtocolError
from hami.protocol.shape import check_node, check_pod
from hami.scheduling.decide import Scheduler, pod_key
from hami.scheduling.quota import quota_object

log = logging.getLogger(__name__)

TERMINAL_PHASES = ("Succeeded", "Failed")
MAX_TOMBSTONES = 4096


def init_containers_done(pod: Mapping[str, Any]) -> bool:
    """True when the pod has init containers and every one that must finish has exited 0.

    Native sidecars (init containers with ``restartPolicy: Always``) keep running and are counted
    like app containers, so they are not waited for.
    """
    init = [c for c in bodies.init_containers(pod) if isinstance(c, Mapping)]
    if not init:
        return False
    statuses = [s for s in bodies.init_container_statuses(pod) if isinstance(s, Mapping)]
    by_name = {s.get("name"): s for s in statuses if s.get("name")}
    for i, container in enumerate(init):
        if bodies.is_sidecar(container):
            continue
        status = by_name.get(container.get("name"))
        if status is None and i < len(statuses) and not statuses[i].get("name"):
            status = statuses[i]  # a status without a name: matched by position
        term = ((status or {}).get("state") or {}).get("terminated")
        if not term or term.get("exitCode") != 0:
            return False
    return True


class LedgerSync:
    """Applies pod and node events to a :class:`Scheduler`'s state. Pure bookkeeping, no I/O."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        scheduler_name: str | None = None,
        reservations: Reservations[asyncio.Task[None]] | None = None,
    ) -> None:
        self.scheduler = scheduler
        #: when set, only pods with this ``spec.schedulerName`` are read from their annotations:
        #: anyone can put a forged allocation annotation on some other pod to make capacity look used
        self.scheduler_name = scheduler_name
        #: what this process decided and the API server does not show yet
        self.reservations: Reservations[asyncio.Task[None]] = (
            reservations if reservations is not None else Reservations()
        )
        #: pods whose annotations could not be decoded (uid -> error)
        self.pod_errors: dict[str, str] = {}
        self._node_seen: dict[str, tuple[Any, ...]] = {}
        #: called with the uid whenever a pod is forgotten (deleted, finished, bind failed), after
        #: it has left the ledger
        self.on_forget: list[Callable[[str], None]] = []
        #: called with every pod event that reaches :meth:`pod_changed`
        self.on_pod: list[Callable[[Mapping[str, Any]], None]] = []
        #: uids of the most recently deleted pods (insertion order, oldest first)
        self._tombstones: OrderedDict[str, None] = OrderedDict()

    @property
    def assumed(self) -> set[str]:
        """Pods decided by this process and not yet seen bound (the reservations' set)."""
        return self.reservations.assumed

    # --- nodes --------------------------------------------------------------------------------
    def node_changed(self, node: Mapping[str, Any]) -> None:
        """Read the node's inventory again if what it is read from changed. Never raises: a node
        that cannot be read is marked bad (``scheduler.node_errors``) and holds no cards."""
        try:
            check_node(node)
        except ProtocolError as exc:
            meta = node.get("metadata") if isinstance(node, Mapping) else None
            name = meta.get("name") if isinstance(meta, Mapping) else None
            name = name if isinstance(name, str) else ""
            self._node_seen.pop(name, None)
            self.scheduler.node_errors[name] = f"node {name}: {exc}"
            self.scheduler.forget_node(name, keep_error=True)
            log.warning("ignoring node inventory: node %s: %s", name, exc)
            return
        name = bodies.name(node)
        annotations = bodies.annotations(node)
        # what the inventory is read from: the registration annotations, and what kubelet says is
        # allocatable (a backend drops a node whose device plugin is gone)
        allocatable = bodies.allocatable(node)
        fingerprint = (
            tuple(
                sorted(
                    (k, v)
                    for k, v in annotations.items()
                    if k.startswith(("hami.io/node-", "hami.io/device-cordon"))
                )
            ),
            tuple(sorted((str(k), str(v)) for k, v in allocatable.items())),
        )
        if self._node_seen.get(name) == fingerprint and name in self.scheduler.state.nodes:
            return
        self._node_seen[name] = fingerprint
        try:
            error = self.scheduler.observe_node(node)
        except Exception as exc:  # a bug reading one node must not stop the watch of every other
            log.exception("node %s: reading its inventory failed", name)
            error = f"node {name}: reading its inventory failed: {type(exc).__name__}: {exc}"
            self.scheduler.node_errors[name] = error
            self.scheduler.forget_node(name, keep_error=True)
        if error:
            log.warning("ignoring node inventory: %s", error)
        for warning in self.scheduler.node_warnings.get(name, ()):
            log.warning("ignoring a registered card: %s", warning)

    def node_deleted(self, node: Mapping[str, Any]) -> None:
        name = bodies.name(node)
        self._node_seen.pop(name, None)
        self.scheduler.forget_node(name)

    # --- namespace quota ----------------------------------------------------------------------
    def quota_changed(self, quota: Mapping[str, Any]) -> None:
        ns, name, hard = quota_object(quota)
        state = self.scheduler.state
        state.set_quota(ns, name, hard)
        error = state.quota.errors.get((ns, name))
        if error:
            log.warning("ResourceQuota %s/%s: ignoring entries: %s", ns, name, error)

    def quota_deleted(self, quota: Mapping[str, Any]) -> None:
        ns, name, _ = quota_object(quota)
        self.scheduler.state.remove_quota(ns, name)

    # --- pods ---------------------------------------------------------------------------------
    def pod_changed(self, pod: Mapping[str, Any]) -> None:
        try:
            check_pod(pod)
        except ProtocolError as exc:  # not what an API server sends: nothing in it can be trusted
            log.warning("ignoring a malformed pod event: %s", exc)
            return
        for callback in self.on_pod:
            callback(pod)
        if bodies.annotations(pod).get(keys.BIND_PHASE) in (keys.BIND_PHASE_SUCCESS, keys.BIND_PHASE_FAILED):
            self.reservations.allocation_finished(bodies.uid(pod))
        uid, _, _ = pod_key(pod)
        state = self.scheduler.state
        phase = bodies.phase(pod)
        if phase in TERMINAL_PHASES:
            self.forget(uid)
            return
        node = bodies.node_name(pod)
        if not node:
            if not self.reservations.is_assumed(uid):
                state.remove_pod(uid)  # stale annotations of an earlier decision hold nothing
            return
        if self.scheduler_name is not None and bodies.spec(pod).get("schedulerName") != self.scheduler_name:
            return  # not placed by hami: its annotations say nothing we can trust
        try:
            alloc = self.scheduler.allocation_of(pod, str(node))
        except ProtocolError as exc:
            self.pod_errors[uid] = str(exc)
            log.warning("pod %s: ignoring corrupt allocation annotation: %s", uid, exc)
            return
        self.pod_errors.pop(uid, None)
        if alloc is None:
            return  # bound without a hami allocation: not ours (or our bind annotation not visible yet)
        alloc.init_released = init_containers_done(pod)
        if state.pods.get(uid) != alloc:
            state.add_pod(alloc)
        self.reservations.confirmed(uid)

    def pod_deleted(self, pod: Mapping[str, Any]) -> None:
        uid, _, _ = pod_key(pod)
        if uid:
            self._tombstones[uid] = None
            self._tombstones.move_to_end(uid)
            while len(self._tombstones) > MAX_TOMBSTONES:
                self._tombstones.popitem(last=False)
        self.forget(uid)

    def was_deleted(self, uid: str) -> bool:
        """True when a delete event for this uid has been seen (uids are never reused)."""
        return uid in self._tombstones

    def forget(self, uid: str) -> None:
        self.reservations.forget(uid)
        self.pod_errors.pop(uid, None)
        self.scheduler.state.remove_pod(uid)
        for callback in self.on_forget:  # after the removal: callbacks see the ledger without it
            callback(uid)
