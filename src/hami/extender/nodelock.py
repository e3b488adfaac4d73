"""The HAMi node lock (``hami.io/mutex.lock`` on the Node) taken at bind, released by the device plugin.

The key and value format are the backend's (:class:`~hami.protocol.nodelock.NodeLockCodec`, HAMi's
by default); release is :func:`hami.kube.nodelock.release_node_lock`, shared with the device plugin.

Fixes over HAMi: a short, configurable expiry (HAMi: 5 minutes); a lock whose owner pod is gone,
finished, or already past allocation (bind-phase success/failed) is taken over at once (HAMi
#1271, #3047); contention is waited out briefly inside ``/bind`` instead of failing the bind, with
this process's binds for one node queued locally so that only one of them at a time competes for
the node's lock on the API server (no conflict storm when a binpack burst waits on one node); a
lock whose owner pod is deleted before its device plugin released it (kubelet never calls
Allocate for it) is released when the deletion is seen (:meth:`NodeLocker.owner_deleted`), so no
lock outlives its pod.
The compare-and-swap is a merge patch carrying the Node's resourceVersion (409 on a race).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.errors import ConflictError
from hami.kube.nodelock import ClientNodes, release_node_lock
from hami.kube.paths import api_path
from hami.protocol import bodies
from hami.protocol.errors import ProtocolError
from hami.protocol.nodelock import HAMI_NODE_LOCK, NodeLock, NodeLockCodec

log = logging.getLogger(__name__)

#: ``owner_alive(namespace, name)``: is the lock owner still a pod waiting for its allocation?
OwnerCheck = Callable[[str, str], Awaitable[bool]]


class NodeLockContention(RuntimeError):
    """The node is locked by another pod's bind that has not finished yet."""


class _NodeQueue:
    """The binds of this process for one node: a FIFO gate and how many use it."""

    __slots__ = ("gate", "users")

    def __init__(self) -> None:
        self.gate = asyncio.Lock()
        self.users = 0


class NodeLocker:
    def __init__(
        self,
        client: KubeClient,
        *,
        expiry: float = 60.0,
        wait: float = 20.0,
        poll: float = 0.5,
        owner_alive: OwnerCheck | None = None,
        node_lookup: Callable[[str], dict[str, Any] | None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        codec: NodeLockCodec = HAMI_NODE_LOCK,
    ) -> None:
        self.client = client
        self.codec = codec
        self.expiry = timedelta(seconds=expiry)
        self.wait = wait
        #: while waiting, re-read the lock at least this often (node watch events wake us sooner)
        self.poll = poll
        self.owner_alive = owner_alive
        self.node_lookup = node_lookup
        self.clock = clock
        #: one event per waiting acquire, set by :meth:`node_changed`
        self._waiters: dict[str, set[asyncio.Event]] = {}
        #: per node, the binds of this process waiting for its lock, front first
        self._queues: dict[str, _NodeQueue] = {}
        #: background releases of deleted owners' locks (kept referenced until done)
        self._releasing: set[asyncio.Task[bool]] = set()

    def owner_deleted(
        self, node: str, namespace: str, name: str, *, allocating: bool
    ) -> asyncio.Task[bool] | None:
        """The pod ``namespace/name`` bound to ``node`` was deleted: if it may hold the lock (its
        allocation had not finished, or the node cache shows its lock), release it in the
        background; the release reads the node and removes only this pod's lock."""
        if not self.codec.records_owner:
            return None  # whose lock it is cannot be told: it expires (or the vendor's plugin frees it)
        cached = self.node_lookup(node) if self.node_lookup is not None else None
        value = bodies.annotations(cached).get(self.codec.key) if cached is not None else None
        if not allocating and not (value and self.codec.held_by(value, namespace, name)):
            return None
        task = asyncio.create_task(self._release_quietly(node, namespace, name))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        return task

    async def _release_quietly(self, node: str, namespace: str, name: str) -> bool:
        try:
            released = await self.release(node, namespace, name)
        except Exception as exc:  # the next acquire takes a dead owner's lock over anyway
            log.warning(
                "node %s: releasing the lock of deleted pod %s/%s failed: %s", node, namespace, name, exc
            )
            return False
        if released:
            log.info("node %s: released the lock of deleted pod %s/%s", node, namespace, name)
        return released

    def node_changed(self, node: str) -> None:
        """Wake binds waiting for ``node``'s lock (call from the node informer)."""
        for event in self._waiters.get(node, ()):
            event.set()

    async def acquire(self, node: str, namespace: str, name: str) -> float:
        """Take the lock for ``namespace/name``; returns seconds waited. Raises NodeLockContention.

        Binds of this process for one node queue here first, in arrival order, and only the front
        one reads and writes the node's lock: when the lock is released, one compare-and-swap is
        sent instead of one per waiting bind (all but one of which would fail with a conflict).
        The whole wait, queue included, is bounded by ``wait``.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        queue = self._queues.get(node)
        if queue is None:
            queue = self._queues[node] = _NodeQueue()
        queue.users += 1
        try:
            try:
                await asyncio.wait_for(queue.gate.acquire(), self.wait)
            except TimeoutError:
                raise NodeLockContention(
                    f"node {node} is locked: {queue.users - 1} binds of this scheduler queued for it"
                ) from None
            try:
                return await self._acquire_front(node, namespace, name, started)
            finally:
                queue.gate.release()
        finally:
            queue.users -= 1
            if not queue.users and self._queues.get(node) is queue:
                del self._queues[node]

    async def _acquire_front(self, node: str, namespace: str, name: str, started: float) -> float:
        changed = asyncio.Event()
        waiters = self._waiters.setdefault(node, set())
        waiters.add(changed)
        try:
            return await self._acquire(node, namespace, name, changed, started)
        finally:
            waiters.discard(changed)
            if not waiters and self._waiters.get(node) is waiters:
                del self._waiters[node]

    async def _acquire(
        self, node: str, namespace: str, name: str, changed: asyncio.Event, started: float
    ) -> float:
        path = api_path("v1", "nodes", name=node)
        loop = asyncio.get_running_loop()
        fresh = self.node_lookup is None
        while True:
            changed.clear()  # cleared before reading: a change after this read wakes the wait below
            cached = None if fresh or self.node_lookup is None else self.node_lookup(node)
            obj = cached if cached is not None else await self.client.get(path)
            fresh = False
            value = bodies.annotations(obj).get(self.codec.key)
            if value and self.codec.held_by(value, namespace, name):
                if cached is not None:
                    # a cached "ours" may already be released on the server (informer lag): check
                    fresh = True
                    continue
                # ours on the server: fall through and re-stamp it, so it cannot expire under us
            elif value and not await self._stale(value, node, namespace, name):
                holder = _holder(self.codec, value)
                if loop.time() - started > self.wait:
                    raise NodeLockContention(f"node {node} is locked by {holder} (bind in progress)")
                # woken by the node watch when the lock is released; re-read at least every poll
                remaining = self.wait - (loop.time() - started)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), max(0.0, min(self.poll, remaining)) + 0.01)
                fresh = self.node_lookup is None
                continue
            lock = self.codec.encode(NodeLock(self.clock(), namespace, name))
            try:
                await self.client.merge_patch(
                    path,
                    {"metadata": {"annotations": {self.codec.key: lock}}},
                    resource_version=bodies.resource_version(obj),
                )
                return loop.time() - started
            except ConflictError:
                fresh = True  # our copy was stale or someone raced us: read it from the server
                continue

    async def _stale(self, value: str, node: str, namespace: str, name: str) -> bool:
        try:
            lock = self.codec.decode(value)
        except ProtocolError as exc:
            log.warning("node %s: replacing corrupt lock %r: %s", node, value, exc)
            return True
        if lock.owned_by(namespace, name):
            return False
        if self.clock() - lock.time > self.expiry:
            log.info("node %s: lock of %s/%s expired", node, lock.namespace, lock.name)
            return True
        if (
            lock.namespace is not None
            and lock.name is not None
            and self.owner_alive is not None
            and not await self.owner_alive(lock.namespace, lock.name)
        ):
            log.info(
                "node %s: lock owner %s/%s is gone or done; taking over", node, lock.namespace, lock.name
            )
            return True
        return False

    async def release(self, node: str, namespace: str, name: str) -> bool:
        """Remove the lock if ``namespace/name`` owns it (or it is a legacy bare timestamp).

        Returns True if a lock was removed; False if there was none, another pod owns it, it is
        corrupt (left for the next acquire to replace), or the node is gone.
        """
        return await release_node_lock(ClientNodes(self.client), node, namespace, name, codec=self.codec)


def _holder(codec: NodeLockCodec, value: str) -> str:
    try:
        lock = codec.decode(value)
    except ProtocolError:
        return value
    return f"{lock.namespace},{lock.name}" if lock.namespace is not None else value
