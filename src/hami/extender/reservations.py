"""The extender's assume cache: what this process decided and the API server does not show yet.

kube-scheduler keeps a pod it placed *assumed* until the informer shows it bound, and drops an
assumption that is never confirmed after a TTL. hami's extender needs the same, plus what sits
between its filter and its bind. One :class:`Reservations` holds all of it, per pod uid; it is
pure bookkeeping (no I/O, no clock: callers pass ``now``), driven by the service and the ledger sync.

Rules:

* **Assumed.** A pod is assumed from the moment this process decides it (:meth:`decided` at
  filter, :meth:`assume` when bind decides again) until its bound copy with an allocation is seen
  (:meth:`confirmed`) or it is forgotten. While a pod is unbound, only an assumed one keeps its
  place in the usage ledger (the sync's rule).
* **Pending decision.** A filter decision leaves the annotations it wrote and the background write
  of them. Bind takes it exactly once (:meth:`take`); a new decision for the same pod replaces it
  and cancels the old write; withdrawing or forgetting the pod cancels the write.
* **Decided-at TTL.** A pending decision older than the TTL whose pod is still assumed is
  *expired* (kube-scheduler gave the pod up after filter): :meth:`expired` names those pods and the
  caller forgets them. It looks at most once per ``sweep_interval`` seconds, so a filter does not
  walk every reservation.
* **In flight.** A pod decided on a node is in flight there from the decision until its
  allocation finished (bind-phase success or failed, :meth:`allocation_finished`) or it is
  withdrawn or forgotten — taking the pending decision at bind does not end it. A node with
  ``limit`` pods in flight is *congested* (:meth:`congested`; ``limit`` <= 0: never).
* **Withdraw** (a filter that found no node) drops the pending decision and the in-flight place
  but keeps the pod assumed; **forget** (deleted, finished, bind failed, expired) drops everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Cancellable(Protocol):
    """The background write of a decision (an ``asyncio.Task`` in the service)."""

    def done(self) -> bool: ...

    def cancel(self) -> bool: ...


W = TypeVar("W", bound=Cancellable)


@dataclass(frozen=True, slots=True)
class PendingDecision(Generic[W]):
    """A filter decision bind has not taken yet."""

    node: str
    annotations: Mapping[str, str]
    write: W
    at: float


class Reservations(Generic[W]):
    """Assumed pods, pending decisions with their decided-at time, per-node in-flight pods."""

    def __init__(self, *, sweep_interval: float = 10.0) -> None:
        self.sweep_interval = sweep_interval
        #: pods decided by this process and not yet seen bound (read it; change it through the methods)
        self.assumed: set[str] = set()
        self._pending: dict[str, PendingDecision[W]] = {}
        self._inflight_node: dict[str, str] = {}
        self._inflight: dict[str, set[str]] = {}
        self._last_sweep = 0.0

    # --- the pod's lifecycle --------------------------------------------------------------------
    def decided(self, uid: str, node: str, annotations: Mapping[str, str], write: W, *, now: float) -> None:
        """Filter placed the pod on ``node``: assume it, keep the decision for bind, count it in flight."""
        self.assumed.add(uid)
        self.withdraw(uid)
        self._pending[uid] = PendingDecision(node, annotations, write, now)
        self._inflight.setdefault(node, set()).add(uid)
        self._inflight_node[uid] = node

    def assume(self, uid: str) -> None:
        """Bind decided the pod again (no pending decision here, e.g. after a restart)."""
        self.assumed.add(uid)

    def take(self, uid: str) -> PendingDecision[W] | None:
        """Bind takes the pending decision (once); the pod stays assumed and in flight."""
        return self._pending.pop(uid, None)

    def confirmed(self, uid: str) -> None:
        """The pod is seen bound with its allocation: the ledger holds it from the informer now."""
        self.assumed.discard(uid)

    def allocation_finished(self, uid: str) -> None:
        """The device plugin finished (or failed) the pod's allocation: it no longer queues on its node."""
        node = self._inflight_node.pop(uid, None)
        if node is None:
            return
        waiting = self._inflight.get(node)
        if waiting is not None:
            waiting.discard(uid)
            if not waiting:
                del self._inflight[node]

    def withdraw(self, uid: str) -> None:
        """Drop the pending decision (cancelling its write) and the in-flight place; stay assumed."""
        self.allocation_finished(uid)
        pending = self._pending.pop(uid, None)
        if pending is not None and not pending.write.done():
            pending.write.cancel()

    def forget(self, uid: str) -> None:
        """Drop everything held for the pod."""
        self.withdraw(uid)
        self.assumed.discard(uid)

    # --- queries --------------------------------------------------------------------------------
    def is_assumed(self, uid: str) -> bool:
        return uid in self.assumed

    def expired(self, *, now: float, ttl: float) -> list[tuple[str, float]]:
        """``(uid, decided at)`` of assumed pods whose pending decision is older than ``ttl``.

        Empty within ``sweep_interval`` seconds of the last look.
        """
        if now - self._last_sweep < self.sweep_interval:
            return []
        self._last_sweep = now
        return [(uid, p.at) for uid, p in self._pending.items() if now - p.at > ttl and uid in self.assumed]

    def congested(self, limit: int) -> frozenset[str]:
        """Nodes with at least ``limit`` pods in flight (none when ``limit`` <= 0)."""
        if limit <= 0 or not self._inflight:
            return frozenset()
        return frozenset(n for n, uids in self._inflight.items() if len(uids) >= limit)

    def in_flight(self, node: str) -> int:
        return len(self._inflight.get(node, ()))

    def pending_count(self) -> int:
        """Filter decisions bind has not taken yet."""
        return len(self._pending)

    def in_flight_count(self) -> int:
        """Pods in flight on any node."""
        return len(self._inflight_node)

    def cancel_writes(self) -> None:
        """Cancel every pending background write (shutdown); the decisions stay for bind."""
        for pending in self._pending.values():
            if not pending.write.done():
                pending.write.cancel()
