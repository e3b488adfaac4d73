"""Filter and bind: the extender's two verbs, wiring the pure core to the API server.

* **filter** decides synchronously (no ``await`` between reading and reserving, so concurrent
  binds cannot interleave with a decision) and answers at once; the decision annotations (HAMi
  keys) are written on the pod by a background task. kube-scheduler calls filter one pod at a
  time, so not waiting for that API round trip is what makes the extender fast. An unschedulable
  pod gets a Warning event that says why, per group of nodes.
* **bind** waits for that write, re-validates the reservation (re-deciding on the chosen node if
  this process holds none, e.g. after a restart), takes the node lock, and binds with the pod UID
  as precondition. The Binding itself carries the decision annotations plus
  ``hami.io/bind-phase=allocating`` and ``bind-time``, which the API server merges into the pod
  atomically with the bind — so a bound pod always has its allocation, even if the background
  write failed. Every failure rolls the reservation back and releases the lock; kube-scheduler then
  retries the pod.
* **Lock-free nodes.** On a node whose device plugin allocates without the lock
  (:mod:`hami.protocol.allocmode`, read from the node cache at filter and again at bind, so a
  node that changes mode is handled at its next bind) a pod whose cards are all the lock-free
  vendor's is bound with one API write: no filter-time write (it would serve nobody), no lock
  (no acquire, no release, no wait behind another pod's lock), and a Binding that carries the
  finished allocation: ``bind-phase=success``, the to-allocate annotation already emptied (what
  the lock protocol's plugin commit ends with), ``vgpu-devices-allocated`` and ``bind-time``.
  Any other pod on that node (another vendor's cards too) goes through the lock protocol.
* Only the leader decides; other replicas answer with an error so kube-scheduler retries.
* What a pod holds between its decision and its bound copy reaching the informer (assumed, the
  pending decision and its write, the decided-at TTL, its place in flight on the node) lives in one
  :class:`~hami.extender.reservations.Reservations`, shared with the ledger sync.
* A bind ends in a :data:`BindResult`: :class:`Bound` or :class:`BindRefused` with the reason
  kube-scheduler sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hami.extender.events import record_event
from hami.extender.nodelock import NodeLockContention, NodeLocker
from hami.extender.reservations import Reservations
from hami.extender.sync import TERMINAL_PHASES, LedgerSync
from hami.extender.wire import BindingArgs, ExtenderArgs, PreemptionArgs
from hami.kube.client import KubeClient
from hami.kube.errors import ConflictError, KubeError, NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.allocmode import is_lock_free
from hami.protocol.pod import encode_pod_devices
from hami.scheduling.decide import Decision, Scheduler
from hami.scheduling.preempt import priority_of, select_victims

log = logging.getLogger(__name__)

PodLookup = Callable[[str, str], "dict[str, Any] | None"]
NodeLookup = Callable[[str], "Mapping[str, Any] | None"]


@dataclass(frozen=True, slots=True)
class FilterOutcome:
    node_names: list[str]
    failed: dict[str, str]
    error: str = ""


@dataclass(frozen=True, slots=True)
class Bound:
    """The pod is bound to ``node``: by this call, or already before it (a retried or lost reply)."""

    node: str


@dataclass(frozen=True, slots=True)
class BindRefused:
    """The pod was not bound; ``reason`` is the error kube-scheduler sees (it retries the pod)."""

    reason: str


BindResult = Bound | BindRefused


class NotLeader(RuntimeError):
    pass


class ExtenderService:
    def __init__(
        self,
        *,
        scheduler: Scheduler,
        sync: LedgerSync,
        client: KubeClient,
        locker: NodeLocker,
        pod_lookup: PodLookup,
        lockers: Sequence[NodeLocker] = (),
        node_lookup: NodeLookup = lambda _name: None,
        lock_free_vendor: str = keys.VENDOR_NVIDIA,
        is_leader: Callable[[], bool] = lambda: True,
        is_synced: Callable[[], bool] = lambda: True,
        scheduler_name: str = "hami-scheduler",
        annotate_at_filter: bool = True,
        bind_queue_limit: int = 0,
        reservation_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scheduler = scheduler
        self.sync = sync
        self.client = client
        self.locker = locker
        #: the node locks under other keys than ``locker``'s, by key (Cambricon's ``dsmlu.lock``)
        self.lockers = {lk.codec.key: lk for lk in lockers}
        self.pod_lookup = pod_lookup
        #: the node informer's copy (no API call): the node's allocation mode is read from it
        self.node_lookup = node_lookup
        #: the vendor whose device plugin can run lock-free (hami's own NVIDIA plugin)
        self.lock_free_vendor = lock_free_vendor
        self.is_leader = is_leader
        self.is_synced = is_synced
        self.scheduler_name = scheduler_name
        self.annotate_at_filter = annotate_at_filter
        #: with N > 0, a node with N pods decided but not yet allocated is tried after all others
        self.bind_queue_limit = bind_queue_limit
        self.clock = clock
        self._last_event: dict[str, tuple[str, float]] = {}
        #: a decision never followed by a bind (kube-scheduler gave the pod up after filter) is
        #: dropped after this many seconds
        self.reservation_ttl = reservation_ttl
        self._decision_keys = [k for b in scheduler.registry for k in b.decision_keys]
        #: called with the pod and the nodes offered when filter refuses a valid pod everywhere
        #: (device-only preemption, :mod:`hami.extender.devicepreempt`)
        self.on_unschedulable: Callable[[Mapping[str, Any], list[str]], None] | None = None

    @property
    def reservations(self) -> Reservations[asyncio.Task[None]]:
        return self.sync.reservations

    def congested_nodes(self) -> frozenset[str]:
        return self.reservations.congested(self.bind_queue_limit)

    def _bound_node(self, pod: Mapping[str, Any]) -> str | None:
        """The node the pod is bound to, from the request or from the (fresher) informer copy."""
        node = bodies.node_name(pod)
        if node:
            return str(node)
        cached = self.pod_lookup(bodies.namespace(pod) or "default", bodies.name(pod))
        if cached is not None and bodies.uid(cached) == bodies.uid(pod):
            node = bodies.node_name(cached)
            return str(node) if node else None
        return None

    def _expire_reservations(self) -> None:
        """Forget decisions kube-scheduler never bound (checked at most every 10 s, on filter)."""
        now = self.clock()
        for uid, at in self.reservations.expired(now=now, ttl=self.reservation_ttl):
            log.info("dropping the reservation of pod %s: decided %.0f s ago and never bound", uid, now - at)
            self.sync.forget(uid)

    def check_ready(self) -> None:
        if not self.is_leader():
            raise NotLeader("this hami scheduler replica is not the leader; retry")
        if not self.is_synced():
            raise NotLeader("hami scheduler cache is not synced yet; retry")

    # ------------------------------------------------------------------------------ filter
    async def filter(self, args: ExtenderArgs) -> FilterOutcome:
        self.check_ready()
        self._expire_reservations()
        pod = args.pod
        uid = bodies.uid(pod)
        if not uid:  # the reservation would be keyed by nothing and never freed
            return FilterOutcome(node_names=[], failed={}, error="pod has no metadata.uid")
        if self.sync.was_deleted(uid):
            # kube-scheduler still had it queued: a decision now would hold a card for nobody
            return FilterOutcome(
                node_names=[], failed={}, error=f"pod {bodies.namespace(pod)}/{bodies.name(pod)} was deleted"
            )
        bound_to = self._bound_node(pod)
        if bound_to:
            # kube-scheduler filtering a stale copy (e.g. after a bind it timed out on): deciding
            # again would drop the running pod's usage and rewrite its annotations
            return FilterOutcome(node_names=[], failed={}, error=f"pod is already bound to node {bound_to}")
        decision = self.scheduler.decide(
            pod, candidates=args.node_names, now=int(self.clock()), congested=self.congested_nodes()
        )
        if decision.node is None:
            self.reservations.withdraw(uid)
            if decision.invalid:
                failed = dict.fromkeys(args.node_names, decision.reason or "invalid request")
            else:
                failed = decision.failed
            if self.on_unschedulable is not None and not decision.invalid:
                self.on_unschedulable(pod, list(args.node_names or ()))
            await self._event(pod, "FilteringFailed", decision.reason or "no node fits", warning=True)
            return FilterOutcome(node_names=[], failed=failed)
        if self.annotate_at_filter and not self._lock_free(decision.node, decision.placements):
            task = asyncio.create_task(self._write_decision_quietly(pod, decision))
        else:  # the Binding alone carries the annotations: one API write less per pod
            task = asyncio.create_task(asyncio.sleep(0))
        self.reservations.decided(uid, decision.node, decision.annotations, task, now=self.clock())
        return FilterOutcome(node_names=[decision.node], failed=decision.failed)

    async def _write_decision_quietly(self, pod: Mapping[str, Any], decision: Decision) -> None:
        try:
            await self._write_decision(pod, decision)
        except KubeError as exc:  # the bind carries the annotations anyway
            log.warning("writing the decision on pod %s failed: %s", decision.pod, exc)

    def decision_patch(self, decision: Decision) -> dict[str, Any]:
        """The merge patch recording a decision; decision keys it does not use are removed."""
        annotations: dict[str, str | None] = dict.fromkeys(self._decision_keys)
        annotations.update(decision.annotations)
        return {"metadata": {"annotations": annotations, "labels": {keys.VGPU_NODE: decision.node}}}

    async def _write_decision(self, pod: Mapping[str, Any], decision: Decision) -> None:
        ns, name = bodies.namespace(pod) or "default", bodies.name(pod)
        await self.client.merge_patch(
            api_path("v1", "pods", namespace=ns, name=name), self.decision_patch(decision)
        )

    # ------------------------------------------------------------------------------ preempt
    async def preempt(self, args: PreemptionArgs) -> dict[str, list[str]]:
        """Per node, the victims whose eviction lets the pod fit its cards (see :mod:`hami.scheduling.preempt`).

        Synchronous like filter: the trial on the ledger is never seen by another request."""
        self.check_ready()
        priorities = {
            uid: self._priority(uid, args.victim_pods.get(uid)) for v in args.victims.values() for uid in v
        }
        return select_victims(self.scheduler, args.pod, args.victims, priorities)

    def _priority(self, uid: str, pod: Mapping[str, Any] | None) -> int:
        """A victim's pod priority: from the Pod sent, else the informer's copy (0 when unknown)."""
        if pod is None:
            alloc = self.scheduler.state.pods.get(uid)
            if alloc is not None:
                cached = self.pod_lookup(alloc.namespace, alloc.name)
                if cached is not None and bodies.uid(cached) == uid:
                    pod = cached
        return priority_of(pod)

    # ------------------------------------------------------------------------------ bind
    async def bind(self, args: BindingArgs) -> str:
        """:meth:`bind_pod` in kube-scheduler's wire form: "" when bound, else the error."""
        result = await self.bind_pod(args)
        return result.reason if isinstance(result, BindRefused) else ""

    def _refuse(self, uid: str, reason: str) -> BindRefused:
        """Refuse the bind and forget the pod's reservation (kube-scheduler retries from filter)."""
        self.sync.forget(uid)
        return BindRefused(reason)

    async def bind_pod(self, args: BindingArgs) -> BindResult:
        self.check_ready()
        try:
            return await self._bind_pod(args)
        except Exception as exc:  # not a Kubernetes error (a bug, a transport the client did not wrap)
            log.exception("binding pod %s/%s to %s failed", args.pod_namespace, args.pod_name, args.node)
            return self._refuse(
                args.pod_uid,
                f"binding pod {args.pod_namespace}/{args.pod_name} to {args.node} failed: "
                f"{type(exc).__name__}: {exc}",
            )

    async def _bind_pod(self, args: BindingArgs) -> BindResult:
        ns, name, uid, node = args.pod_namespace, args.pod_name, args.pod_uid, args.node
        if self.sync.was_deleted(uid):
            return self._refuse(uid, f"pod {ns}/{name} was deleted")
        pod = self.pod_lookup(ns, name)
        if pod is None or bodies.uid(pod) != uid:
            try:
                pod = await self.client.get(api_path("v1", "pods", namespace=ns, name=name))
            except NotFoundError:
                return self._refuse(uid, f"pod {ns}/{name} not found")
        if bodies.uid(pod) != uid:
            return self._refuse(uid, f"pod {ns}/{name} was replaced (uid changed)")
        bound_to = bodies.node_name(pod)
        if bound_to:
            if bound_to == node:
                return Bound(node)
            return BindRefused(f"pod {ns}/{name} is already bound to node {bound_to}")
        pending = self.reservations.take(uid)
        annotations: dict[str, str] = {}
        if pending is not None:
            annotations = dict(pending.annotations)
            with contextlib.suppress(asyncio.CancelledError):
                await pending.write
        alloc = self.scheduler.state.pods.get(uid)
        if alloc is None or alloc.node != node or annotations.get(keys.VGPU_NODE) != node:
            # no reservation here (restart, or a decision this process did not make): decide again
            decision = self.scheduler.decide(pod, candidates=[node], now=int(self.clock()))
            if decision.node is None:
                return BindRefused(f"pod {ns}/{name} no longer fits node {node}: {decision.reason}")
            self.reservations.assume(uid)
            annotations = dict(decision.annotations)
            if not self._lock_free(node, decision.placements):
                try:
                    await self._write_decision(pod, decision)
                except KubeError as exc:
                    return self._refuse(uid, f"writing the decision on pod {ns}/{name} failed: {exc}")
            alloc = self.scheduler.state.pods[uid]
        if self._lock_free(node, alloc.containers):
            lockers: list[NodeLocker] = []
            annotations.update(self._finished_allocation(alloc.containers))
        else:
            lockers = self._lockers_for(alloc.containers)
            annotations[keys.BIND_PHASE] = keys.BIND_PHASE_ALLOCATING
        taken: list[NodeLocker] = []
        for lk in lockers:
            try:
                await lk.acquire(node, ns, name)
            except (NodeLockContention, KubeError) as exc:
                await self._release_locks(taken, node, ns, name)
                return self._refuse(uid, f"binding pod {ns}/{name} to {node}: {exc}")
            except Exception:
                # it may have been written: only ours is removed (a lock naming no owner may be
                # another bind's, so it is left to expire)
                codec = getattr(lk, "codec", None)
                maybe_ours = codec is None or codec.records_owner
                await self._release_locks([*taken, lk] if maybe_ours else taken, node, ns, name)
                raise
            taken.append(lk)
        try:
            await self.client.bind_pod(
                ns,
                name,
                uid=uid,
                node=node,
                annotations={**annotations, keys.BIND_TIME: str(int(self.clock()))},
            )
        except Exception as exc:  # a KubeError, or anything else the client let through
            if await self._bound_here(ns, name, uid, node):
                return Bound(node)  # the binding landed (a lost reply, or a retried bind): nothing to undo
            self.sync.forget(uid)
            await self._release_locks(taken, node, ns, name)
            if isinstance(exc, ConflictError):
                return BindRefused(f"binding pod {ns}/{name} to {node} was refused: {exc}")
            if not isinstance(exc, KubeError):
                log.error("binding pod %s/%s to %s failed: %r", ns, name, node, exc)
                return BindRefused(f"binding pod {ns}/{name} to {node} failed: {type(exc).__name__}: {exc}")
            return BindRefused(f"binding pod {ns}/{name} to {node} failed: {exc}")
        return Bound(node)

    async def _bound_here(self, ns: str, name: str, uid: str, node: str) -> bool:
        try:
            pod = await self.client.get(api_path("v1", "pods", namespace=ns, name=name))
        except Exception:  # cannot tell: treat as not bound (the caller rolls back)
            return False
        return bodies.uid(pod) == uid and bodies.node_name(pod) == node

    def _lock_free(self, node: str, containers: Mapping[str, Sequence[Sequence[Any]]]) -> bool:
        """Bind without the node lock: the node's plugin is lock-free and every card the pod gets
        is the lock-free vendor's (another vendor's plugin still identifies the pod by the lock)."""
        if not is_lock_free(self.node_lookup(node)):
            return False
        vendors = {vendor for vendor, per_container in containers.items() if any(per_container)}
        return vendors == {self.lock_free_vendor}

    def _finished_allocation(self, containers: Mapping[str, Sequence[Sequence[Any]]]) -> dict[str, str]:
        """What the lock protocol's plugin commit leaves on the pod: every container's to-allocate
        entry erased and ``bind-phase=success`` (the allocated annotation is the decision's)."""
        backend = self.scheduler.registry.get(self.lock_free_vendor)
        empty = encode_pod_devices([() for _ in containers[self.lock_free_vendor]])
        return {backend.to_allocate_key: empty, keys.BIND_PHASE: keys.BIND_PHASE_SUCCESS}

    def _lockers_for(self, containers: Mapping[str, Sequence[Sequence[Any]]]) -> list[NodeLocker]:
        """The node locks a bind takes, in key order (HAMi's ``lockAllDevices``): one per lock key of
        the vendors any container (init containers too) gets cards of.

        HAMi locks only for regular containers; then an init-only pod is allocated without the lock
        and the device plugin can serve it another pod's cards. A key this extender has no locker
        for is skipped: a lock its vendor's device plugin never releases must not be written.
        """
        codec = getattr(self.locker, "codec", None)
        chosen: dict[str, NodeLocker] = {}
        for vendor, per_container in containers.items():
            lock_key = self.scheduler.registry.get(vendor).lock_key
            if lock_key is None or not any(per_container):
                continue
            if codec is None or lock_key == codec.key:
                chosen[lock_key if codec is not None else ""] = self.locker
            elif lock_key in self.lockers:
                chosen[lock_key] = self.lockers[lock_key]
        return [chosen[k] for k in sorted(chosen)]

    async def _release_locks(self, taken: Sequence[NodeLocker], node: str, ns: str, name: str) -> None:
        """Release the locks a failed bind took, last first; a failure is logged, never raised."""
        for lk in reversed(taken):
            try:
                await lk.release(node, ns, name)
            except Exception as exc:
                log.warning("releasing lock on %s after failed bind: %s", node, exc)

    # ------------------------------------------------------------------------------ events
    async def _event(self, pod: Mapping[str, Any], reason: str, message: str, *, warning: bool) -> None:
        uid = bodies.uid(pod)
        now = self.clock()
        last = self._last_event.get(uid)
        if last is not None and last[0] == message and now - last[1] < 30:
            return  # kube-scheduler retries often; one event per distinct message is enough
        self._last_event[uid] = (message, now)
        if len(self._last_event) > 10000:
            self._last_event.clear()
        await record_event(self.client, pod, reason, message, warning=warning, component=self.scheduler_name)


async def owner_alive_from(pod_lookup: PodLookup, client: KubeClient, namespace: str, name: str) -> bool:
    """Is the lock owner still waiting for its allocation? Gone / finished / allocated means no."""
    pod = pod_lookup(namespace, name)
    if pod is None:
        try:
            pod = await client.get(api_path("v1", "pods", namespace=namespace, name=name))
        except NotFoundError:
            return False
    if bodies.phase(pod) in TERMINAL_PHASES:
        return False
    if bodies.is_deleting(pod):
        return False
    phase = bodies.annotations(pod).get(keys.BIND_PHASE)
    return phase not in (keys.BIND_PHASE_SUCCESS, keys.BIND_PHASE_FAILED)
