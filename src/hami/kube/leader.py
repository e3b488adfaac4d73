"""Lease-based leader election (``coordination.k8s.io/v1`` Lease), compatible with client-go's.

::

    elector = LeaderElector(kc, namespace="kube-system", name="hami-scheduler", identity=pod_name,
                            on_started_leading=..., on_stopped_leading=...)
    elector.start()
    ...
    if elector.is_leader: decide()          # cheap, safe to call on every request
    ...
    await elector.stop()                    # releases the lease so a standby takes over at once

Algorithm (the same as client-go's ``leaderelection`` package, so hami replicas can share a lease
with anything that speaks it):

* Every ``retry_period`` a candidate GETs the Lease. It creates it if missing, takes it if the
  holder is empty or if the record has not changed for ``leaseDurationSeconds`` *as observed by
  this process's monotonic clock* (no cross-host clock comparison), and otherwise waits.
* Taking and renewing are PUTs carrying the Lease's ``resourceVersion``: of two racing
  candidates exactly one wins; the other gets a 409 and stays a follower.
* The leader renews every ``retry_period``. If no renewal succeeds within ``renew_deadline`` it
  steps down (``on_stopped_leading``) and becomes a candidate again. Because
  ``renew_deadline < lease_duration``, a partitioned leader steps down before anyone else may
  take over. :attr:`is_leader` also turns false by itself once the last successful renewal is
  older than ``renew_deadline``, even if the loop is stalled.
* On :meth:`stop` the leader releases the lease (empty holder, 1 s duration).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.errors import ConflictError, KubeError, NotFoundError
from hami.kube.paths import api_path
from hami.kube.times import micro_time
from hami.protocol import bodies

__all__ = ["LeaderElector"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Callback = Callable[[], Any]


class LeaderElector:
    """One candidate in a Lease-based election.

    :param identity: this candidate's unique id (pod name, hostname+uuid, ...).
    :param lease_duration: how long followers wait, after the record last changed, before
        taking over (seconds; stored rounded up in ``leaseDurationSeconds``).
    :param renew_deadline: how long the leader keeps retrying renewals before stepping down.
    :param retry_period: interval between acquire/renew attempts.
    :param on_started_leading: / :param on_stopped_leading: called (sync or async) on transitions;
        keep them short, they run in the election task.
    :param on_new_leader: called with the holder's identity whenever an observed holder changes.
    :param release_on_stop: release the lease in :meth:`stop` (default True).
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
        on_new_leader: Callable[[str], Any] | None = None,
        release_on_stop: bool = True,
    ) -> None:
        if not identity:
            raise ValueError("identity must not be empty")
        if not lease_duration > renew_deadline > 0:
            raise ValueError("need lease_duration > renew_deadline > 0")
        if not 0 < retry_period * 1.2 < renew_deadline:
            raise ValueError("need renew_deadline > 1.2 * retry_period > 0")
        self._client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.release_on_stop = release_on_stop
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._path = api_path("coordination.k8s.io/v1", "leases", namespace=namespace, name=name)
        self._collection = api_path("coordination.k8s.io/v1", "leases", namespace=namespace)
        self._leading = False
        self._last_renew = -math.inf
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = -math.inf
        self._observed_duration = lease_duration
        self._leader: str = ""
        self._leading_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------ state

    @property
    def is_leader(self) -> bool:
        """True while this candidate holds the lease and renewed it within ``renew_deadline``."""
        return self._leading and time.monotonic() - self._last_renew < self.renew_deadline

    @property
    def leader_identity(self) -> str:
        """The holder last observed in the Lease (``""`` if none)."""
        return self._leader

    async def wait_for_leadership(self, timeout: float | None = None) -> None:
        """Wait until this candidate leads; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            await self._leading_event.wait()

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> asyncio.Task[None]:
        """Run the election in a background task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"leader-election:{self.name}:{self.identity}")
        return self._task

    async def stop(self) -> None:
        """Stop campaigning; a leader releases the lease (if ``release_on_stop``) and steps down."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def run(self) -> None:
        """Campaign forever (until cancelled): acquire, then renew until lost, then repeat."""
        try:
            while True:
                while not await self._attempt(self.renew_deadline):
                    await asyncio.sleep(self.retry_period * random.uniform(1.0, 1.2))
                await self._set_leading(True)
                await self._renew_loop()
                await self._set_leading(False)
        finally:
            if self._leading:
                self._leading = False
                self._leading_event.clear()
                if self.release_on_stop:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(max(self.retry_period, 1.0)):
                            await self._release()
                await self._call(self._on_stopped)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retry_period)
            while True:
                remaining = self._last_renew + self.renew_deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "leader election %s: %s failed to renew; stepping down", self.name, self.identity
                    )
                    return
                if await self._attempt(remaining):
                    break
                if not self._leading_holder_is_me():
                    log.warning("leader election %s: lease taken by %s", self.name, self._leader)
                    return
                await asyncio.sleep(min(self.retry_period, max(remaining, 0.0)))

    def _leading_holder_is_me(self) -> bool:
        return self._leader in ("", self.identity)

    async def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            log.info("leader election %s: %s became leader", self.name, self.identity)
            self._leading_event.set()
            await self._call(self._on_started)
        else:
            log.info("leader election %s: %s stopped leading", self.name, self.identity)
            self._leading_event.clear()
            await self._call(self._on_stopped)

    async def _call(self, cb: Callable[..., Any] | None, *args: Any) -> None:
        if cb is None:
            return
        try:
            result = cb(*args)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("leader election %s: callback %r failed", self.name, cb)

    # ------------------------------------------------------------------------------ the lease

    async def _attempt(self, timeout: float) -> bool:
        """One acquire-or-renew attempt bounded by ``timeout``; True if we hold the lease now."""
        try:
            async with asyncio.timeout(timeout):
                return await self._try_acquire_or_renew()
        except TimeoutError:
            return False
        except KubeError as exc:
            log.info("leader election %s: %s", self.name, exc)
            return False

    def _observe(self, lease: Obj) -> None:
        spec = bodies.spec(lease)
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("acquireTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
            duration = spec.get("leaseDurationSeconds")
            self._observed_duration = (
                float(duration) if isinstance(duration, int | float) else self.lease_duration
            )
        if holder != self._leader:
            self._leader = holder
            if holder:
                asyncio.get_running_loop().call_soon(self._notify_new_leader, holder)

    def _notify_new_leader(self, holder: str) -> None:
        if self._on_new_leader is not None:
            try:
                self._on_new_leader(holder)
            except Exception:
                log.exception("leader election %s: on_new_leader failed", self.name)

    def _spec(self, old: Obj, now: str) -> Obj:
        spec = dict(old)
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if old else 0)
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = max(1, math.ceil(self.lease_duration))
        spec["renewTime"] = now
        return spec

    async def _try_acquire_or_renew(self) -> bool:
        now = micro_time()
        try:
            lease = await self._client.get(self._path)
        except NotFoundError:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {**self._spec({}, now), "leaseTransitions": 0},
            }
            try:
                created = await self._client.create(self._collection, body)
            except ConflictError:
                return False
            self._observe(created)
            self._last_renew = time.monotonic()
            return True
        self._observe(lease)
        spec = bodies.spec(lease)
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            if time.monotonic() < self._observed_at + self._observed_duration:
                return False  # someone else holds an unexpired lease
            log.info("leader election %s: lease of %s expired; taking over", self.name, holder)
        sent_at = time.monotonic()
        try:
            updated = await self._client.replace(self._path, {**lease, "spec": self._spec(spec, now)})
        except ConflictError:
            return False
        self._observe(updated)
        self._last_renew = sent_at
        return True

    async def _release(self) -> None:
        lease = await self._client.get(self._path)
        spec = dict(bodies.spec(lease))
        if spec.get("holderIdentity") != self.identity:
            return
        now = micro_time()
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=now, acquireTime=now)
        await self._client.replace(self._path, {**lease, "spec": spec})
        log.info("leader election %s: %s released the lease", self.name, self.identity)
