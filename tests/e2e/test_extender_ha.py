"""Several extender replicas on one Lease: only the holder decides; a follower takes over.

Two :class:`~hami.extender.runner.Extender` replicas with ``leader_elect=True`` share a Lease (short
timings, so fail-over takes seconds). A follower answers ``/filter`` and ``/bind`` with ``Error`` set
(HTTP 200), which makes kube-scheduler retry the pod, and decides nothing. When the leader stops
(gracefully, releasing the Lease, or by crashing, leaving it to expire) the other replica takes
over and schedules -- checked through direct HTTP calls and through two real kube-schedulers,
each pointed at its own replica as in HAMi's pod layout (kube-scheduler + extender per pod), and
``follow_scheduler_lease``: leading exactly while the kube-scheduler of the same pod holds its Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from hami.config import DeviceConfig
from hami.devices.registry import default_registry
from hami.extender.runner import Extender, ExtenderSettings
from hami.extender.schedulerconfig import scheduler_configuration
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.testing.controlplane import SchedulerHandle
from hami.testing.gpucluster import AllocationCompleter, create_gpu_node, gpu_cards, gpu_pod
from hami.testing.stack import assert_no_overcommit, list_pods, wait_for

pytestmark = pytest.mark.integration

LEASE = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.5}


# The replicas answer to a scheduler name no running kube-scheduler uses, so the pods of these tests
# are touched only by the calls the tests make (and the ledger trusts only pods of that name).
HA_SCHEDULER = "nobody"
HA_CONFIG = DeviceConfig.default().model_copy(
    update={"hami": DeviceConfig.default().hami.model_copy(update={"scheduler_name": HA_SCHEDULER})}
)


def replica(kube_config: KubeConfig, namespace: str, identity: str) -> Extender:
    return Extender(
        kube_config,
        ExtenderSettings(
            port=0,
            device_config=HA_CONFIG,
            node_lock_expiry=60,
            bind_lock_wait=10,
            leader_elect=True,
            lease_namespace=namespace,
            lease_name="hami-scheduler-extender",
            identity=identity,
            **LEASE,
        ),
    )


@pytest.fixture
async def replicas(kube_config: KubeConfig, namespace: str) -> AsyncIterator[list[Extender]]:
    started: list[Extender] = []
    try:
        for identity in ("replica-a", "replica-b"):
            ext = replica(kube_config, namespace, identity)
            await ext.start()
            started.append(ext)
        yield started
    finally:
        for ext in started:
            with contextlib.suppress(Exception):
                await ext.stop()


async def leader_of(replicas: list[Extender], timeout: float = 15) -> Extender:
    async def one() -> Extender | None:
        leading = [r for r in replicas if r.service.is_leader()]
        assert len(leading) <= 1, "two replicas lead at once"
        return leading[0] if leading else None

    found: Extender = await wait_for(one, timeout=timeout, interval=0.1)
    return found


async def make_nodes(kc: KubeClient, namespace: str, count: int) -> list[str]:
    names = []
    for i in range(count):
        name = f"{namespace}-n{i}"
        await create_gpu_node(kc, name, gpu_cards(name, 2, mem=16000), labels={"hami-test": namespace})
        names.append(name)
    return names


async def create_pod(
    kc: KubeClient, namespace: str, name: str, scheduler: str = "hami-scheduler"
) -> dict[str, Any]:
    pod = gpu_pod(name, mem=2000, cores=10, scheduler_name=scheduler)
    pod["spec"]["nodeSelector"] = {"hami-test": namespace}
    return await kc.create(api_path("v1", "pods", namespace=namespace), pod)


async def post(http: aiohttp.ClientSession, ext: Extender, verb: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{ext.url}/{verb}", data=orjson.dumps(body)) as r:
        assert r.status == 200, await r.text()
        reply: dict[str, Any] = orjson.loads(await r.read())
        return reply


async def holder(kc: KubeClient, namespace: str) -> str:
    lease = await kc.get(
        api_path("coordination.k8s.io/v1", "leases", namespace=namespace, name="hami-scheduler-extender")
    )
    value: str = lease["spec"].get("holderIdentity") or ""
    return value


async def test_only_the_lease_holder_decides_and_the_follower_takes_over(
    kube_client: KubeClient, namespace: str, replicas: list[Extender]
) -> None:
    nodes = await make_nodes(kube_client, namespace, 1)
    leader = await leader_of(replicas)
    follower = next(r for r in replicas if r is not leader)
    assert await holder(kube_client, namespace) == leader.settings.identity
    # a Pod no kube-scheduler handles: only our calls below touch it
    pod = await create_pod(kube_client, namespace, "p1", scheduler=HA_SCHEDULER)
    uid = pod["metadata"]["uid"]
    pod_path = api_path("v1", "pods", namespace=namespace, name="p1")
    filter_args = {"Pod": pod, "Nodes": None, "NodeNames": nodes}
    bind_args = {"PodName": "p1", "PodNamespace": namespace, "PodUID": uid, "Node": nodes[0]}

    async with aiohttp.ClientSession() as http:
        # both replicas are ready (synced); only one leads
        for ext, text in ((leader, b"ok"), (follower, b"ok (follower)")):
            async with http.get(f"{ext.url}/readyz") as r:
                assert (r.status, await r.read()) == (200, text)

        # the follower refuses both verbs with an error (kube-scheduler retries) and decides nothing
        reply = await post(http, follower, "filter", filter_args)
        assert reply["NodeNames"] is None and "not the leader" in reply["Error"]
        reply = await post(http, follower, "bind", bind_args)
        assert "not the leader" in reply["Error"]
        await asyncio.sleep(0.3)
        assert not [a for a in follower.scheduler.state.pods.values() if a.namespace == namespace]
        assert not follower.sync.assumed
        p = await kube_client.get(pod_path)
        assert not p["spec"].get("nodeName") and keys.VGPU_NODE not in (
            p["metadata"].get("annotations") or {}
        )
        node = await kube_client.get(api_path("v1", "nodes", name=nodes[0]))
        assert keys.NODE_LOCK not in (node["metadata"].get("annotations") or {})

        # the leader schedules and binds
        reply = await post(http, leader, "filter", filter_args)
        assert reply["NodeNames"] == nodes and reply["Error"] == ""
        assert (await post(http, leader, "bind", bind_args)) == {"Error": ""}
        p = await kube_client.get(pod_path)
        assert p["spec"]["nodeName"] == nodes[0]

        # the follower's ledger follows the API objects (its informer), though it never decided
        async def follower_sees_p1() -> bool:
            return uid in follower.scheduler.state.pods

        await wait_for(follower_sees_p1, timeout=10, interval=0.1)

        # the leader stops gracefully: it releases the Lease, the follower takes over at once
        stopped_at = time.monotonic()
        await leader.stop()
        replicas.remove(leader)
        new_leader = await leader_of([follower], timeout=10)
        assert new_leader is follower
        assert time.monotonic() - stopped_at < LEASE["lease_duration"] + 2
        assert await holder(kube_client, namespace) == follower.settings.identity
        async with http.get(f"{follower.url}/readyz") as r:
            assert (r.status, await r.read()) == (200, b"ok")

        # ... and schedules, counting what the old leader placed
        # (the lock of p1 is still held: its owner is bound and allocating, so p2 may only wait
        # for it; release it as the device plugin would once Allocate is done)
        await kube_client.merge_patch(pod_path, {"metadata": {"annotations": {keys.BIND_PHASE: "success"}}})
        pod2 = await create_pod(kube_client, namespace, "p2", scheduler=HA_SCHEDULER)
        reply = await post(http, follower, "filter", {"Pod": pod2, "Nodes": None, "NodeNames": nodes})
        assert reply["NodeNames"] == nodes and reply["Error"] == ""
        bind2 = {
            "PodName": "p2",
            "PodNamespace": namespace,
            "PodUID": pod2["metadata"]["uid"],
            "Node": nodes[0],
        }
        assert (await post(http, follower, "bind", bind2)) == {"Error": ""}
    usage = await assert_no_overcommit(kube_client, namespace, nodes)
    assert sum(u[0] for u in usage.values()) == 2
    assert {a.name for a in follower.scheduler.state.pods.values() if a.namespace == namespace} == {
        "p1",
        "p2",
    }


async def test_crashed_leader_is_replaced_after_the_lease_expires(
    kube_client: KubeClient, namespace: str, replicas: list[Extender]
) -> None:
    leader = await leader_of(replicas)
    follower = next(r for r in replicas if r is not leader)
    assert leader.elector is not None
    leader.elector.release_on_stop = False  # a crash: nobody hands the Lease over
    crashed_at = time.monotonic()
    await leader.stop()
    replicas.remove(leader)
    assert await holder(kube_client, namespace) == leader.settings.identity  # still recorded
    await leader_of([follower], timeout=LEASE["lease_duration"] + 10)
    took = time.monotonic() - crashed_at
    # the follower waits out the lease it observed (no cross-host clock comparison) ...
    assert took >= LEASE["lease_duration"] - LEASE["retry_period"] * 2, took
    # ... and not much longer
    assert took < LEASE["lease_duration"] + 8, took
    assert await holder(kube_client, namespace) == follower.settings.identity


async def test_failover_behind_real_kube_schedulers(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    replicas: list[Extender],
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    """HAMi's layout: each replica's kube-scheduler calls its own extender on loopback. The
    follower's kube-scheduler gets errors and retries; every pod is bound exactly once, by the
    leader; after the leader's pod dies, the other pod schedules everything."""
    nodes = await make_nodes(kube_client, namespace, 2)
    leader = await leader_of(replicas)
    follower = next(r for r in replicas if r is not leader)
    completer = AllocationCompleter(KubeClient(kube_config))
    await completer.start()
    kube_schedulers: dict[str, SchedulerHandle] = {}
    for ext in replicas:
        cfg = scheduler_configuration(
            extender_url=ext.url, registry=default_registry(), scheduler_name=HA_SCHEDULER
        )
        kube_schedulers[ext.settings.identity] = await asyncio.to_thread(start_scheduler, cfg)
    try:

        async def bound(prefix: str, count: int) -> bool:
            pods = [
                p for p in await list_pods(kube_client, namespace) if p["metadata"]["name"].startswith(prefix)
            ]
            done = [
                p
                for p in pods
                if bodies.node_name(p)
                and bodies.annotations(p).get(keys.BIND_PHASE) == keys.BIND_PHASE_SUCCESS
            ]
            return len(done) == count

        for i in range(6):
            await create_pod(kube_client, namespace, f"before-{i}", scheduler=HA_SCHEDULER)
        await wait_for(lambda: bound("before-", 6), timeout=90, interval=0.5)
        # bound exactly once, and only by the leader (the API refuses a second binding anyway)
        assert leader.metrics.bind_results.labels("bound")._value.get() == 6
        assert follower.metrics.bind_results.labels("bound")._value.get() == 0
        assert not follower.sync.assumed  # it never decided a pod

        # the leader's pod dies: extender and its kube-scheduler, without releasing the Lease
        assert leader.elector is not None
        leader.elector.release_on_stop = False
        await leader.stop()
        replicas.remove(leader)
        await asyncio.to_thread(kube_schedulers[leader.settings.identity].stop)
        for i in range(6):
            await create_pod(kube_client, namespace, f"after-{i}", scheduler=HA_SCHEDULER)
        await wait_for(lambda: bound("after-", 6), timeout=90, interval=0.5)
        assert follower.service.is_leader()
        assert follower.metrics.bind_results.labels("bound")._value.get() == 6
    finally:
        await completer.stop()
        await completer.client.close()
    await assert_no_overcommit(kube_client, namespace, nodes)
    # no lock left behind, and the surviving ledger matches the API objects
    for name in nodes:
        n = await kube_client.get(api_path("v1", "nodes", name=name))
        assert keys.NODE_LOCK not in (n["metadata"].get("annotations") or {})
    ledger = {a.name for a in follower.scheduler.state.pods.values() if a.namespace == namespace}
    assert ledger == {f"before-{i}" for i in range(6)} | {f"after-{i}" for i in range(6)}


async def test_following_the_kube_scheduler_lease(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    """``follow_scheduler_lease``: the extender leads exactly while the kube-scheduler in its pod
    (same hostname) holds kube-scheduler's own Lease -- so, with kube-scheduler's leader election
    on, the scheduling kube-scheduler always talks to the deciding extender."""
    ours = Extender(
        kube_config,
        ExtenderSettings(
            port=0,
            device_config=DeviceConfig.default(),
            follow_scheduler_lease=True,
            lease_namespace=namespace,
            lease_name="hami-scheduler",
            retry_period=0.3,
        ),
    )
    other = Extender(
        kube_config,
        ExtenderSettings(
            port=0,
            device_config=DeviceConfig.default(),
            follow_scheduler_lease=True,
            lease_namespace=namespace,
            lease_name="hami-scheduler",
            lease_holder_prefix="another-pod",
            retry_period=0.3,
        ),
    )
    await ours.start()
    await other.start()
    try:
        assert not ours.service.is_leader() and not other.service.is_leader()  # no Lease yet
        nodes = await make_nodes(kube_client, namespace, 1)
        cfg = scheduler_configuration(extender_url=ours.url, registry=default_registry())
        cfg["leaderElection"] = {
            "leaderElect": True,
            "resourceName": "hami-scheduler",
            "resourceNamespace": namespace,
            "leaseDuration": "4s",
            "renewDeadline": "3s",
            "retryPeriod": "1s",
        }
        handle = await asyncio.to_thread(start_scheduler, cfg)

        async def ours_leads() -> bool:
            return ours.service.is_leader()

        await wait_for(ours_leads, timeout=30, interval=0.1)
        assert (await holder_of(kube_client, namespace, "hami-scheduler")).startswith(
            socket.gethostname() + "_"
        )
        assert not other.service.is_leader()
        # the pair schedules
        completer = AllocationCompleter(KubeClient(kube_config))
        await completer.start()
        try:
            await create_pod(kube_client, namespace, "led")

            async def bound() -> bool:
                p = await kube_client.get(api_path("v1", "pods", namespace=namespace, name="led"))
                return bodies.node_name(p) == nodes[0]

            await wait_for(bound, timeout=60, interval=0.2)
        finally:
            await completer.stop()
            await completer.client.close()
        # kube-scheduler goes away: the extender stops deciding within a lease duration
        await asyncio.to_thread(handle.kill)

        async def ours_follows() -> bool:
            return not ours.service.is_leader()

        await wait_for(ours_follows, timeout=15, interval=0.1)
    finally:
        await ours.stop()
        await other.stop()


async def holder_of(kc: KubeClient, namespace: str, name: str) -> str:
    lease = await kc.get(api_path("coordination.k8s.io/v1", "leases", namespace=namespace, name=name))
    value: str = lease["spec"].get("holderIdentity") or ""
    return value
