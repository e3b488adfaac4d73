"""Device-only preemption: the extender preempts when only card memory, cores or slots are short.

kube-scheduler's DefaultPreemption chooses victims with its in-tree plugins, which cannot see
hami's ``ignoredByScheduler`` resources: when a pod fits everything kube-scheduler counts and only
the cards are full, it proposes no victim and never calls the preempt verb. This module covers that
case inside the leading extender, with the rules of :mod:`hami.scheduling.preempt`:

* **When.** hami's filter refused the pod on every node kube-scheduler offered (those nodes fit
  everything else), and kube-scheduler has finished a cycle for it without preempting: the pod
  shows ``PodScheduled=False`` (reason ``Unschedulable``) and no ``status.nominatedNodeName``. So
  hami never preempts beside kube-scheduler for the same pod. Checked on the pod's watch events and
  on each later refused filter.
* **Who may go.** Pods of strictly lower priority, bound with a hami allocation on one of the
  nodes offered, not already terminating. A pod with ``preemptionPolicy: Never`` preempts nobody.
* **What.** The node and the minimal victim set come from :func:`plan_preemption` on the real
  ledger: the preemptor is fitted with every rule (card type/UUID, topology, quota — a victim in
  another namespace frees no quota of the preemptor's) and nothing is evicted unless it then fits.
* **How.** Every victim is evicted through the **Eviction API** (PodDisruptionBudgets apply), with
  the victim's uid as precondition. All of them are first evicted with ``dryRun``: if any is
  refused (a PDB, an error) none is evicted and the pod is tried again later. Events: ``Preempted``
  on each victim, ``Preempting`` on the preemptor (``PreemptionFailed`` when refused).
* **No over-commit.** Evicted pods keep their cards in the ledger while they terminate (the ledger
  drops a pod when it is deleted or finished). When the last victim is gone, hami reserves the
  freed card(s) for the preemptor at once (the same event-loop step, so no filter sees the card
  free), as a filter decision would; its next filter decides again and binds. hami does not write
  ``status.nominatedNodeName``: that is kube-scheduler's field, and kube-scheduler clears it when
  its own preemption finds no candidate — exactly this case.
* **Bounded.** At most one preemption per pod while its victims terminate, one try per pod every
  ``retry_s`` seconds and one plan every ``interval_s`` seconds overall (slots booked in arrival
  order, so no pod starves behind later ones; a pod with no lower-priority pod on its nodes takes
  no slot); a nomination is dropped when
  the preemptor binds, is deleted, or after ``ttl_s``.
* **Never dropped.** A try that the bounds hold back, or that finds no victims, is retried by a
  timer (after what is left of the bound, or ``retry_s``) for as long as the pod stays
  unschedulable: kube-scheduler may not retry an unschedulable pod for minutes when nothing in the
  cluster changes, so the preemption cannot wait for its next filter call.
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
from hami.extender.reservations import Reservations
from hami.kube.client import KubeClient
from hami.kube.errors import KubeError, NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies
from hami.scheduling.decide import Scheduler, pod_key
from hami.scheduling.preempt import plan_preemption, priority_of

log = logging.getLogger(__name__)

PodLookup = Callable[[str, str], "dict[str, Any] | None"]
#: ``(result, victims)`` after each try: result is ``evicted``, ``no-victims``, ``never`` (the pod's
#: ``preemptionPolicy``), ``refused`` (an eviction was refused) or ``error``
OutcomeHook = Callable[[str, int], None]


@dataclass(slots=True)
class Nomination:
    """A preemption under way: the preemptor (by uid) waits on ``node`` for ``victims`` to go."""

    namespace: str
    name: str
    node: str
    victims: tuple[str, ...]
    at: float
    reserved: bool = False


def unschedulable_without_nomination(pod: Mapping[str, Any]) -> bool:
    """kube-scheduler finished a cycle for the pod and preempted nobody for it."""
    status = pod.get("status")
    status = status if isinstance(status, Mapping) else {}
    if status.get("nominatedNodeName"):
        return False
    for cond in status.get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "PodScheduled":
            return cond.get("status") == "False" and cond.get("reason") == "Unschedulable"
    return False


class DevicePreemptor:
    """Plans and carries out device-only preemptions (see the module docstring). Event-loop only."""

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        reservations: Reservations[asyncio.Task[None]],
        client: KubeClient,
        pod_lookup: PodLookup,
        is_leader: Callable[[], bool] = lambda: True,
        scheduler_name: str = "hami-scheduler",
        clock: Callable[[], float] = time.time,
        retry_s: float = 10.0,
        interval_s: float = 1.0,
        ttl_s: float = 300.0,
        on_outcome: OutcomeHook | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.reservations = reservations
        self.client = client
        self.pod_lookup = pod_lookup
        self.is_leader = is_leader
        self.scheduler_name = scheduler_name
        self.clock = clock
        self.retry_s, self.interval_s, self.ttl_s = retry_s, interval_s, ttl_s
        self.on_outcome = on_outcome
        #: preemptor uid -> the nodes its last refused filter was offered
        self._offered: dict[str, list[str]] = {}
        self._last_try: dict[str, float] = {}
        #: when the next plan may run (``interval_s`` apart overall; later slots are booked)
        self._next_slot = float("-inf")
        #: preemptor uid -> the preemption under way
        self.nominations: dict[str, Nomination] = {}
        #: preemptor uid -> the last try's result (for logs and tests)
        self.outcomes: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: preemptor uid -> the timer of its next try
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # --- triggers -------------------------------------------------------------------------------
    def filter_failed(self, pod: Mapping[str, Any], nodes: Sequence[str]) -> None:
        """hami's filter refused the pod on ``nodes`` (not an invalid request)."""
        uid = bodies.uid(pod)
        if not uid or not nodes:
            return
        self._offered[uid] = list(nodes)
        cached = self.pod_lookup(bodies.namespace(pod) or "default", bodies.name(pod))
        if cached is not None and bodies.uid(cached) == uid:
            self._consider(cached)

    def pod_event(self, pod: Mapping[str, Any]) -> None:
        """Every pod watch event (before the ledger applies it)."""
        uid = bodies.uid(pod)
        if not uid:
            return
        if bodies.node_name(pod):
            self._done(uid)  # bound (the preemptor), or a running pod: nothing to wait for
            return
        if uid in self._offered:
            # after this event is applied: kube-scheduler's status write ends its cycle
            asyncio.get_running_loop().call_soon(
                self._consider_uid, uid, bodies.namespace(pod), bodies.name(pod)
            )

    def pod_forgotten(self, uid: str) -> None:
        """A pod left the ledger (deleted, finished): a preemptor's wait may be over."""
        self._done(uid)
        for puid, nom in list(self.nominations.items()):
            if uid in nom.victims:
                self._settle(puid, nom)

    def _done(self, uid: str) -> None:
        timer = self._timers.pop(uid, None)
        if timer is not None:
            timer.cancel()
        self._offered.pop(uid, None)
        self._last_try.pop(uid, None)
        self.nominations.pop(uid, None)

    # --- planning -------------------------------------------------------------------------------
    def _consider_uid(self, uid: str, namespace: str | None, name: str, booked: bool = False) -> None:
        pod = self.pod_lookup(namespace or "default", name)
        if pod is not None and bodies.uid(pod) == uid:
            self._consider(pod, booked)

    def _consider(self, pod: Mapping[str, Any], booked: bool = False) -> None:
        """Plan a preemption for ``pod`` now if the bounds allow it, else later (``_try_later``).
        ``booked``: this call is the plan slot booked for the pod earlier, in arrival order."""
        uid = bodies.uid(pod)
        now = self.clock()
        nom = self.nominations.get(uid)
        if nom is not None:
            if now - nom.at < self.ttl_s:
                return  # its victims are still terminating, or the freed card waits for it
            del self.nominations[uid]
        if (
            not self.is_leader()
            or bodies.node_name(pod)
            or bodies.is_deleting(pod)
            or bodies.spec(pod).get("schedulerName") != self.scheduler_name
            or not unschedulable_without_nomination(pod)
        ):
            return
        retry_wait = self.retry_s - (now - self._last_try.get(uid, float("-inf")))
        if retry_wait > 0:
            self._try_later(pod, retry_wait)
            return
        if bodies.spec(pod).get("preemptionPolicy") == "Never":
            self._last_try[uid] = now
            self._outcome(uid, "never", 0)
            return
        candidates, priorities = self._candidates(pod)
        if not candidates:  # nobody of lower priority on the offered nodes: no plan to make
            self._last_try[uid] = now
            self._outcome(uid, "no-victims", 0)
            self._try_later(pod, self.retry_s)
            return
        if not booked:
            if now < self._next_slot:
                # the next free plan slot, booked now: pods are planned in the order they came,
                # so a busy cluster delays a pod's try but never starves it
                slot, self._next_slot = self._next_slot, self._next_slot + self.interval_s
                self._try_later(pod, slot - now, booked=True)
                return
            self._next_slot = now + self.interval_s
        self._last_try[uid] = now
        plan = plan_preemption(self.scheduler, pod, candidates, priorities)
        if plan is None:
            self._outcome(uid, "no-victims", 0)
            self._try_later(pod, self.retry_s)
            return
        node, victims = plan
        _, ns, name = pod_key(pod)
        self.nominations[uid] = Nomination(ns, name, node, tuple(victims), now)
        task = asyncio.create_task(self._evict(dict(pod), node, victims))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _candidates(self, pod: Mapping[str, Any]) -> tuple[dict[str, list[str]], dict[str, int]]:
        """Per offered node, the bound pods of lower priority than ``pod`` (victim uids), and their
        priorities. Cheap (no fitting), so only pods with candidates take a plan slot."""
        prio = priority_of(pod)
        candidates: dict[str, list[str]] = {}
        priorities: dict[str, int] = {}
        for node in self._offered.get(bodies.uid(pod), []):
            for alloc in self.scheduler.state.pods_on(node):
                if alloc.uid in self.reservations.assumed:
                    continue  # decided, not bound yet: nothing to evict
                victim = self.pod_lookup(alloc.namespace, alloc.name)
                if victim is None or bodies.uid(victim) != alloc.uid or bodies.is_deleting(victim):
                    continue
                vprio = priority_of(victim)
                if vprio < prio:
                    candidates.setdefault(node, []).append(alloc.uid)
                    priorities[alloc.uid] = vprio
        return candidates, priorities

    def _try_later(self, pod: Mapping[str, Any], delay: float, booked: bool = False) -> None:
        """Consider ``pod`` again after ``delay`` seconds (one timer per pod) while it is offered;
        ``booked``: in the plan slot booked for it."""
        uid = bodies.uid(pod)
        if uid in self._timers or uid not in self._offered:
            return
        namespace, name = bodies.namespace(pod), bodies.name(pod)

        def fire() -> None:
            self._timers.pop(uid, None)
            if uid in self._offered:
                self._consider_uid(uid, namespace, name, booked)

        self._timers[uid] = asyncio.get_running_loop().call_later(delay, fire)

    def _settle(self, puid: str, nom: Nomination) -> None:
        """Once every victim is off the ledger, reserve the freed card(s) for the preemptor. When
        it no longer fits there (or is gone), the nomination ends: it may be tried again."""
        if nom.reserved or any(v in self.scheduler.state.pods for v in nom.victims):
            return
        nom.reserved = True
        pod = self.pod_lookup(nom.namespace, nom.name)
        if pod is None or bodies.uid(pod) != puid or bodies.node_name(pod):
            self.nominations.pop(puid, None)
            return
        decision = self.scheduler.decide(pod, candidates=[nom.node], now=int(self.clock()))
        if decision.node is None:
            log.info(
                "preemption for %s/%s: %s no longer fits %s", nom.namespace, nom.name, puid, decision.reason
            )
            self.nominations.pop(puid, None)
            return
        placeholder = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        self.reservations.decided(puid, decision.node, decision.annotations, placeholder, now=self.clock())

    # --- eviction -------------------------------------------------------------------------------
    async def _evict(self, pod: dict[str, Any], node: str, victims: list[str]) -> None:
        uid, ns, name = pod_key(pod)
        allocs = [a for v in victims if (a := self.scheduler.state.pods.get(v)) is not None]
        names = ", ".join(f"{a.namespace}/{a.name}" for a in allocs)
        try:
            for dry in (True, False):
                for a in allocs:
                    await self._evict_one(a.namespace, a.name, a.uid, dry_run=dry)
        except KubeError as exc:
            self.nominations.pop(uid, None)
            log.info("preemption for %s/%s on %s refused: %s", ns, name, node, exc)
            await self._event(pod, "PreemptionFailed", f"could not evict {names} on node {node}: {exc}", True)
            self._outcome(uid, "refused", 0)
            return
        except Exception:  # a bug: nothing may stop the informer that called us
            self.nominations.pop(uid, None)
            log.exception("preemption for %s/%s on %s failed", ns, name, node)
            self._outcome(uid, "error", 0)
            return
        log.info("preempting %s on node %s for %s/%s", names, node, ns, name)
        await self._event(
            pod,
            "Preempting",
            f"evicting {names} (lower priority) on node {node} to free card(s) for this pod",
            False,
        )
        for a in allocs:
            victim = self.pod_lookup(a.namespace, a.name) or {
                "metadata": {"namespace": a.namespace, "name": a.name, "uid": a.uid},
                "kind": "Pod",
                "apiVersion": "v1",
            }
            await self._event(
                victim, "Preempted", f"Preempted by pod {uid} ({ns}/{name}) on node {node}", False
            )
        self._outcome(uid, "evicted", len(allocs))

    async def _evict_one(self, namespace: str, name: str, uid: str, *, dry_run: bool) -> None:
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"namespace": namespace, "name": name},
            "deleteOptions": {"preconditions": {"uid": uid}},
        }
        path = api_path("v1", "pods", namespace=namespace, name=name, subresource="eviction")
        with contextlib.suppress(NotFoundError):  # already gone: nothing to evict
            await self.client.create(path, body, params={"dryRun": "All"} if dry_run else None)

    async def _event(self, pod: Mapping[str, Any], reason: str, message: str, warning: bool) -> None:
        await record_event(self.client, pod, reason, message, warning=warning, component=self.scheduler_name)

    def _outcome(self, uid: str, result: str, victims: int) -> None:
        self.outcomes[uid] = result
        if len(self.outcomes) > 10000:
            self.outcomes.clear()
        if self.on_outcome is not None:
            self.on_outcome(result, victims)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
