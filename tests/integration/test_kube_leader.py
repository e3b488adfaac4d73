"""hami.kube.leader against a real kube-apiserver: one leader at a time, hand-over, expiry, partition."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.leader import LeaderElector
from hami.kube.paths import api_path
from hami.testing.controlplane import ControlPlane
from hami.testing.proxy import TcpProxy

pytestmark = pytest.mark.integration

FAST = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.2}
SLOW = {"lease_duration": 5.0, "renew_deadline": 4.0, "retry_period": 0.2}


async def sample_exclusive(
    electors: list[LeaderElector], seconds: float, until: LeaderElector | None = None
) -> set[str]:
    """Poll is_leader for ``seconds`` (or until ``until`` leads); fail if two lead at once.
    Returns the identities that led."""
    led: set[str] = set()
    end = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < end:
        leaders = [e.identity for e in electors if e.is_leader]
        assert len(leaders) <= 1, f"two leaders at once: {leaders}"
        led.update(leaders)
        if until is not None and until.is_leader:
            break
        await asyncio.sleep(0.02)
    return led


async def lease(kc: KubeClient, ns: str, name: str) -> dict:  # type: ignore[type-arg]
    return await kc.get(api_path("coordination.k8s.io/v1", "leases", namespace=ns, name=name))


async def test_only_one_leads_and_standby_takes_over_on_release(
    kube_client: KubeClient, namespace: str
) -> None:
    transitions: list[str] = []
    new_leaders: list[str] = []

    def make(ident: str) -> LeaderElector:
        return LeaderElector(
            kube_client,
            namespace=namespace,
            name="hami-scheduler",
            identity=ident,
            on_started_leading=lambda: transitions.append(f"{ident}+"),
            on_stopped_leading=lambda: transitions.append(f"{ident}-"),
            on_new_leader=new_leaders.append,
            **SLOW,
        )

    a, b = make("a"), make("b")
    a.start()
    b.start()
    try:
        for _ in range(500):
            if a.is_leader or b.is_leader:
                break
            await asyncio.sleep(0.02)
        led = await sample_exclusive([a, b], 2.0)
        assert len(led) == 1
        first, second = (a, b) if a.is_leader else (b, a)
        assert second.leader_identity == first.identity
        rec = await lease(kube_client, namespace, "hami-scheduler")
        assert rec["spec"]["holderIdentity"] == first.identity
        assert rec["spec"]["leaseDurationSeconds"] == 5
        transitions_before = rec["spec"].get("leaseTransitions", 0)

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await first.stop()  # releases the lease
        assert not first.is_leader
        await second.wait_for_leadership(timeout=5)
        assert loop.time() - t0 < 3.0, (
            "release should let the standby take over without waiting for expiry (5 s)"
        )
        await sample_exclusive([a, b], 0.5)
        rec = await lease(kube_client, namespace, "hami-scheduler")
        assert rec["spec"]["holderIdentity"] == second.identity
        assert rec["spec"]["leaseTransitions"] > transitions_before
        assert transitions == [f"{first.identity}+", f"{first.identity}-", f"{second.identity}+"]
        assert second.identity in new_leaders
    finally:
        await a.stop()
        await b.stop()
    rec = await lease(kube_client, namespace, "hami-scheduler")
    assert rec["spec"].get("holderIdentity", "") == ""  # released on stop


async def test_takeover_after_expiry_when_leader_vanishes(kube_client: KubeClient, namespace: str) -> None:
    a = LeaderElector(kube_client, namespace=namespace, name="l", identity="a", release_on_stop=False, **FAST)
    b = LeaderElector(kube_client, namespace=namespace, name="l", identity="b", **FAST)
    a.start()
    await a.wait_for_leadership(timeout=5)
    b.start()
    try:
        await sample_exclusive([a, b], 0.6)
        assert a.is_leader and not b.is_leader
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await a.stop()  # "crash": no release
        await b.wait_for_leadership(timeout=10)
        waited = loop.time() - t0
        assert 1.0 < waited < 10.0, waited  # waited for the 2 s lease to expire
    finally:
        await b.stop()


async def test_partitioned_leader_steps_down_before_takeover(
    kube_client: KubeClient, kube_config: KubeConfig, control_plane: ControlPlane, namespace: str
) -> None:
    async with TcpProxy("127.0.0.1", control_plane.apiserver_port) as proxy:
        cfg = dataclasses.replace(kube_config, server=f"https://127.0.0.1:{proxy.port}")
        async with KubeClient(cfg, timeout=1.0) as cut_off:
            stopped = asyncio.Event()
            a = LeaderElector(
                cut_off, namespace=namespace, name="p", identity="a", on_stopped_leading=stopped.set, **FAST
            )
            b = LeaderElector(kube_client, namespace=namespace, name="p", identity="b", **FAST)
            a.start()
            await a.wait_for_leadership(timeout=5)
            b.start()
            try:
                await sample_exclusive([a, b], 0.5)
                proxy.pause()  # a can no longer renew
                # a must step down (renew deadline 1.5 s) before b may take over (2 s lease).
                led = await sample_exclusive([a, b], 15.0, until=b)
                assert stopped.is_set() and not a.is_leader
                assert b.is_leader and led == {"a", "b"}
                proxy.resume()
                await sample_exclusive([a, b], 1.0)  # a rejoins as a follower
                assert b.is_leader and a.leader_identity == "b"
            finally:
                await a.stop()
                await b.stop()
