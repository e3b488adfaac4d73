"""The node lock (``hami.io/mutex.lock``) against a real kube-apiserver.

Covers the HAMi-compatible value, compare-and-swap on the Node's resourceVersion, waiting for a
held lock (woken by node watch events, not by polling), timeouts, and the take-over rules that fix
HAMi's stuck locks: expired, owner deleted / finished / terminating / already allocated, corrupt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hami.config import DeviceConfig
from hami.extender.nodelock import NodeLockContention, NodeLocker
from hami.extender.runner import Extender, ExtenderSettings
from hami.extender.service import owner_alive_from
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import ConflictError, NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.nodelock import decode_node_lock, format_rfc3339

pytestmark = pytest.mark.integration

NodeFactory = Callable[[], Awaitable[str]]


@pytest.fixture
async def make_node(kube_client: KubeClient) -> AsyncIterator[NodeFactory]:
    """Plain Node objects (no kubelet, no GPUs), deleted after the test."""
    created: list[str] = []

    async def make() -> str:
        name = f"lock-{uuid.uuid4().hex[:8]}"
        await kube_client.create(
            api_path("v1", "nodes"), {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
        )
        created.append(name)
        return name

    yield make
    for name in created:
        with contextlib.suppress(NotFoundError):
            await kube_client.delete(api_path("v1", "nodes", name=name))


async def lock_value(kc: KubeClient, node: str) -> str | None:
    n = await kc.get(api_path("v1", "nodes", name=node))
    return bodies.annotations(n).get(keys.NODE_LOCK)


async def set_lock(kc: KubeClient, node: str, value: str | None) -> None:
    await kc.merge_patch(
        api_path("v1", "nodes", name=node), {"metadata": {"annotations": {keys.NODE_LOCK: value}}}
    )


async def make_pod(
    kc: KubeClient,
    namespace: str,
    name: str,
    *,
    annotations: dict[str, str] | None = None,
    finalizers: list[str] | None = None,
) -> dict[str, Any]:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}, "finalizers": finalizers or []},
        # no scheduler handles it: a kube-scheduler started by another test must not place it
        "spec": {"schedulerName": "no-scheduler", "containers": [{"name": "c", "image": "busybox"}]},
    }
    return await kc.create(api_path("v1", "pods", namespace=namespace), body)


def owner_check(kc: KubeClient) -> Callable[[str, str], Awaitable[bool]]:
    """The production owner check, reading owners from the API server (no informer cache)."""
    return lambda ns, name: owner_alive_from(lambda _ns, _n: None, kc, ns, name)


def ago(seconds: float) -> str:
    return format_rfc3339(datetime.now(UTC) - timedelta(seconds=seconds))


async def test_acquire_release_and_the_hami_value(
    kube_client: KubeClient, namespace: str, make_node: NodeFactory
) -> None:
    node = await make_node()
    locker = NodeLocker(kube_client, expiry=60, wait=1)
    before = datetime.now(UTC).replace(microsecond=0)
    waited = await locker.acquire(node, namespace, "a")
    assert waited < 1.0
    value = await lock_value(kube_client, node)
    assert value is not None
    stamp, ns, name = value.split(",")  # HAMi: "<RFC3339>,<namespace>,<name>"
    assert (ns, name) == (namespace, "a") and stamp.endswith("Z")
    lock = decode_node_lock(value)
    assert before <= lock.time <= datetime.now(UTC)
    # re-acquiring by the same owner (a multi-vendor pod locks once per vendor) keeps the lock and
    # re-stamps it with the locker's clock, so it cannot expire under the bind; a fixed clock makes
    # the stamp exact (the real clock may tick to the next second between the two calls)
    later = lock.time + timedelta(seconds=7)
    again = NodeLocker(kube_client, expiry=60, wait=1, clock=lambda: later)
    await again.acquire(node, namespace, "a")
    assert await lock_value(kube_client, node) == f"{format_rfc3339(later)},{namespace},a"
    await again.acquire(node, namespace, "a")
    assert await lock_value(kube_client, node) == f"{format_rfc3339(later)},{namespace},a"
    assert await locker.release(node, namespace, "a") is True
    assert await lock_value(kube_client, node) is None
    assert await locker.release(node, namespace, "a") is False  # nothing left to release
    # a missing node: acquire raises the API error, release says no
    with pytest.raises(NotFoundError):
        await locker.acquire("no-such-node-" + uuid.uuid4().hex[:6], namespace, "a")
    assert await locker.release("no-such-node-" + uuid.uuid4().hex[:6], namespace, "a") is False


async def test_contention_waits_and_is_woken_by_node_changed(
    kube_client: KubeClient, namespace: str, make_node: NodeFactory
) -> None:
    node = await make_node()
    holder = NodeLocker(kube_client, expiry=60, wait=1)
    await holder.acquire(node, namespace, "a")
    # poll far beyond the test: only node_changed can wake the waiter in time
    waiter = NodeLocker(kube_client, expiry=60, wait=20, poll=60)
    task = asyncio.create_task(waiter.acquire(node, namespace, "b"))
    await asyncio.sleep(0.5)
    assert not task.done()
    waiter.node_changed("some-other-node")  # unrelated nodes do not wake it
    await asyncio.sleep(0.2)
    assert not task.done()
    assert await holder.release(node, namespace, "a")
    released = time.monotonic()
    waiter.node_changed(node)  # what the node informer does on the update
    waited = await asyncio.wait_for(task, timeout=10)
    assert time.monotonic() - released < 5.0
    assert 0.5 < waited < 10
    lock = decode_node_lock(await lock_value(kube_client, node) or "")
    assert lock.owned_by(namespace, "b")


async def test_contention_times_out(kube_client: KubeClient, namespace: str, make_node: NodeFactory) -> None:
    node = await make_node()
    await NodeLocker(kube_client).acquire(node, namespace, "a")
    held = await lock_value(kube_client, node)
    waiter = NodeLocker(kube_client, expiry=60, wait=0.6, poll=0.2)
    started = time.monotonic()
    with pytest.raises(NodeLockContention) as info:
        await waiter.acquire(node, namespace, "b")
    assert 0.6 <= time.monotonic() - started < 5
    assert f"{namespace},a" in str(info.value) and node in str(info.value)
    assert await lock_value(kube_client, node) == held  # untouched
    assert not waiter._waiters  # no waiter bookkeeping left behind


async def test_two_binds_racing_for_a_free_node_exactly_one_wins(
    kube_client: KubeClient, namespace: str, make_node: NodeFactory
) -> None:
    """Every bind reads the node before any of them writes — deterministically: each locker's
    node cache (the extender's informer) holds the same copy of the free node, so every first
    write carries that copy's resourceVersion and only the lock's compare-and-swap can stop the
    losers from overwriting the winner's lock."""
    node = await make_node()
    free = await kube_client.get(api_path("v1", "nodes", name=node))
    lockers = [
        NodeLocker(kube_client, expiry=60, wait=1.0, poll=0.1, node_lookup=lambda _n: free) for _ in range(4)
    ]
    results = await asyncio.gather(
        *(lk.acquire(node, namespace, f"p{i}") for i, lk in enumerate(lockers)), return_exceptions=True
    )
    winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert all(isinstance(r, NodeLockContention) for i, r in enumerate(results) if i != winners[0])
    assert decode_node_lock(await lock_value(kube_client, node) or "").owned_by(namespace, f"p{winners[0]}")


async def test_expired_lock_is_taken_over(
    kube_client: KubeClient, namespace: str, make_node: NodeFactory
) -> None:
    node = await make_node()
    await make_pod(kube_client, namespace, "old")  # alive: only the expiry frees it
    await set_lock(kube_client, node, f"{ago(120)},{namespace},old")
    locker = NodeLocker(kube_client, expiry=60, wait=0.5, owner_alive=owner_check(kube_client))
    assert await locker.acquire(node, namespace, "new") < 1.0
    assert decode_node_lock(await lock_value(kube_client, node) or "").owned_by(namespace, "new")
    # a fresh lock of a live owner is not
    await set_lock(kube_client, node, f"{ago(5)},{namespace},old")
    with pytest.raises(NodeLockContention):
        await NodeLocker(kube_client, expiry=60, wait=0.3, owner_alive=owner_check(kube_client)).acquire(
            node, namespace, "new"
        )


@pytest.mark.parametrize(
    "owner",
    ["deleted", "succeeded", "failed", "terminating", "bind-phase-success", "bind-phase-failed"],
)
async def test_lock_of_an_owner_that_no_longer_waits_is_taken_over(
    kube_client: KubeClient, namespace: str, make_node: NodeFactory, owner: str
) -> None:
    """HAMi keeps such locks for 5 minutes (#1271, #3047); we take them over at once."""
    node = await make_node()
    name = "owner"
    pod_path = api_path("v1", "pods", namespace=namespace, name=name)
    if owner.startswith("bind-phase-"):
        await make_pod(
            kube_client, namespace, name, annotations={keys.BIND_PHASE: owner.removeprefix("bind-phase-")}
        )
    elif owner in ("succeeded", "failed"):
        await make_pod(kube_client, namespace, name)
        await kube_client.merge_patch(
            api_path("v1", "pods", namespace=namespace, name=name, subresource="status"),
            {"status": {"phase": owner.capitalize()}},
        )
    elif owner == "terminating":
        await make_pod(kube_client, namespace, name, finalizers=["hami.io/test-hold"])
        await kube_client.delete(pod_path)
        assert (await kube_client.get(pod_path))["metadata"].get("deletionTimestamp")
    # "deleted": no such pod at all
    await set_lock(kube_client, node, f"{ago(1)},{namespace},{name}")
    locker = NodeLocker(kube_client, expiry=300, wait=0.5, owner_alive=owner_check(kube_client))
    try:
        assert await locker.acquire(node, namespace, "next") < 1.0
        assert decode_node_lock(await lock_value(kube_client, node) or "").owned_by(namespace, "next")
    finally:
        if owner == "terminating":
            await kube_client.merge_patch(pod_path, {"metadata": {"finalizers": None}})


async def test_lock_of_an_owner_still_allocating_is_respected(
    kube_client: KubeClient, namespace: str, make_node: NodeFactory
) -> None:
    node = await make_node()
    await make_pod(kube_client, namespace, "busy", annotations={keys.BIND_PHASE: keys.BIND_PHASE_ALLOCATING})
    value = f"{ago(1)},{namespace},busy"
    await set_lock(kube_client, node, value)
    locker = NodeLocker(kube_client, expiry=300, wait=0.4, poll=0.1, owner_alive=owner_check(kube_client))
    with pytest.raises(NodeLockContention):
        await locker.acquire(node, namespace, "next")
    assert await lock_value(kube_client, node) == value


async def test_release_only_by_the_owner(
    kube_client: KubeClient, namespace: str, make_node: NodeFactory
) -> None:
    node = await make_node()
    locker = NodeLocker(kube_client)
    await locker.acquire(node, namespace, "a")
    value = await lock_value(kube_client, node)
    assert await locker.release(node, namespace, "b") is False
    assert await locker.release(node, "other-namespace", "a") is False
    assert await lock_value(kube_client, node) == value
    assert await locker.release(node, namespace, "a") is True
    assert await lock_value(kube_client, node) is None


async def test_legacy_bare_timestamp_lock(
    kube_client: KubeClient, namespace: str, make_node: NodeFactory
) -> None:
    """Old HAMi wrote just the time: no owner to check, so it blocks until it expires; anyone may
    release it (HAMi's ReleaseNodeLock does the same)."""
    node = await make_node()
    fresh = ago(1)
    await set_lock(kube_client, node, fresh)
    locker = NodeLocker(kube_client, expiry=60, wait=0.3, poll=0.1, owner_alive=owner_check(kube_client))
    with pytest.raises(NodeLockContention):
        await locker.acquire(node, namespace, "a")
    assert await lock_value(kube_client, node) == fresh
    assert await locker.release(node, namespace, "anyone") is True
    assert await lock_value(kube_client, node) is None
    # an expired legacy lock is taken over
    await set_lock(kube_client, node, ago(600))
    assert await locker.acquire(node, namespace, "a") < 1.0
    assert decode_node_lock(await lock_value(kube_client, node) or "").owned_by(namespace, "a")


@pytest.mark.parametrize(
    "corrupt", ["garbage", "2026-11-22T08:00:00Z,only-namespace", "yesterday,ns,p", ",,"]
)
async def test_corrupt_lock_is_replaced(
    kube_client: KubeClient, namespace: str, make_node: NodeFactory, corrupt: str
) -> None:
    node = await make_node()
    await set_lock(kube_client, node, corrupt)
    locker = NodeLocker(kube_client, expiry=300, wait=0.3, owner_alive=owner_check(kube_client))
    # release never deletes what it cannot read as someone's lock
    assert await locker.release(node, namespace, "a") is False
    assert await lock_value(kube_client, node) == corrupt
    assert await locker.acquire(node, namespace, "a") < 1.0
    assert decode_node_lock(await lock_value(kube_client, node) or "").owned_by(namespace, "a")


async def test_extender_wakes_lock_waiters_from_its_node_informer(
    kube_config: KubeConfig, kube_client: KubeClient, namespace: str, make_node: NodeFactory
) -> None:
    """The running extender's node informer feeds NodeLocker.node_changed: a bind waiting for a
    lock proceeds as soon as the device side removes it, not at the next poll."""
    node = await make_node()
    await make_pod(
        kube_client, namespace, "holder", annotations={keys.BIND_PHASE: keys.BIND_PHASE_ALLOCATING}
    )
    await set_lock(kube_client, node, f"{ago(1)},{namespace},holder")
    ext = Extender(
        kube_config, ExtenderSettings(port=0, device_config=DeviceConfig.default(), node_lock_expiry=300)
    )
    await ext.start()
    try:
        ext.locker.poll = 60.0  # only a watch event can wake the waiter within the test
        task = asyncio.create_task(ext.locker.acquire(node, namespace, "next"))
        await asyncio.sleep(0.5)
        assert not task.done()
        # the device plugin's Allocate finished and released the lock (a plain API write)
        await set_lock(kube_client, node, None)
        released = time.monotonic()
        await asyncio.wait_for(task, timeout=10)
        assert time.monotonic() - released < 5.0
        assert decode_node_lock(await lock_value(kube_client, node) or "").owned_by(namespace, "next")
    finally:
        await ext.stop()


async def test_cached_lock_of_ours_is_verified_on_the_server_and_restamped(
    kube_client: KubeClient, make_node: NodeFactory
) -> None:
    """Review finding: a cached copy still showing our lock (informer lag after a release) must not
    count as holding it; and a lock we do hold is re-stamped so it cannot expire under the bind."""
    node = await make_node()
    old = format_rfc3339(datetime.now(UTC) - timedelta(seconds=50))
    stale_cache = {"metadata": {"name": node, "annotations": {keys.NODE_LOCK: f"{old},ns,p"}}}
    locker = NodeLocker(kube_client, expiry=60, wait=2, node_lookup=lambda _n: stale_cache)
    # the server has no lock at all: acquiring must write one
    await locker.acquire(node, "ns", "p")
    value = await lock_value(kube_client, node)
    assert value is not None and value.endswith(",ns,p")
    # the server holds our 50 s old lock: acquiring again re-stamps it
    await set_lock(kube_client, node, f"{old},ns,p")
    await locker.acquire(node, "ns", "p")
    value = await lock_value(kube_client, node)
    assert value is not None
    assert datetime.now(UTC) - decode_node_lock(value).time < timedelta(seconds=10)


class ConflictCountingClient(KubeClient):
    """The real client, counting the compare-and-swaps the API server refused."""

    conflicts = 0

    async def merge_patch(self, path: str, patch: Any, *, resource_version: str | None = None) -> Any:
        try:
            return await super().merge_patch(path, patch, resource_version=resource_version)
        except ConflictError:
            self.conflicts += 1
            raise


async def test_binds_queued_for_one_node_take_turns_without_conflicts(
    kube_config: KubeConfig, namespace: str, make_node: NodeFactory
) -> None:
    """Six binds of one scheduler wait for the same node's lock (a binpack burst): they get it in
    arrival order, and only the front one competes for it on the API server, so no compare-and-swap
    is ever refused (without the queue every release sets off a race that all but one lose)."""
    node = await make_node()
    async with ConflictCountingClient(kube_config) as kc:
        locker = NodeLocker(kc, expiry=60, wait=20, poll=0.02)  # no cache: every waiter polls the server
        order: list[int] = []

        async def bind_and_allocate(i: int) -> None:
            await locker.acquire(node, namespace, f"p{i}")
            order.append(i)
            await asyncio.sleep(0.05)  # the device plugin's Allocate, then its release
            assert await locker.release(node, namespace, f"p{i}")

        await asyncio.gather(*(bind_and_allocate(i) for i in range(6)))
        assert order == list(range(6))
        assert kc.conflicts == 0
        assert not locker._queues and not locker._waiters
