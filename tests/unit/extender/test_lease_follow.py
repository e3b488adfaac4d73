"""LeaseFollower: lead exactly while this pod's kube-scheduler holds a valid Lease (HAMi's isHolderOf/isLeaseValid)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hami.extender.leasefollow import LeaseFollower, holds
from hami.kube.times import micro_time

NOW = datetime(2026, 11, 22, 8, 0, 0, tzinfo=UTC)


def lease(holder: str | None, renewed: datetime | None = NOW, duration: int | None = 15) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed is not None:
        spec["renewTime"] = micro_time(renewed)
    if duration is not None:
        spec["leaseDurationSeconds"] = duration
    return {"metadata": {"name": "hami-scheduler"}, "spec": spec}


def follower(now: list[datetime]) -> LeaseFollower:
    return LeaseFollower(
        None,  # type: ignore[arg-type]  # observe() needs no client
        namespace="kube-system",
        name="hami-scheduler",
        holder_prefix="hami-scheduler-7d9f-abcde",
        clock=lambda: now[0],
    )


def test_holder_prefix_matching() -> None:
    pod = "hami-scheduler-7d9f-abcde"
    assert holds(f"{pod}_4b3c2a10-0000-4000-8000-000000000000", pod)  # kube-scheduler's identity
    assert holds(pod, pod)
    assert not holds("hami-scheduler-7d9f-abcdef_1234", pod)  # another pod whose name extends ours
    assert not holds("other_1234", pod)
    assert not holds("", pod)
    assert not holds("x", "")


def test_leads_while_our_scheduler_holds_a_valid_lease() -> None:
    now = [NOW + timedelta(seconds=1)]
    f = follower(now)
    assert not f.is_leader  # nothing observed yet
    f.observe(lease("hami-scheduler-7d9f-abcde_1234"))
    assert f.is_leader and f.holder == "hami-scheduler-7d9f-abcde_1234"
    now[0] = NOW + timedelta(seconds=14.9)
    assert f.is_leader
    now[0] = NOW + timedelta(seconds=15.1)  # not renewed in time: our scheduler lost it
    assert not f.is_leader
    f.observe(lease("hami-scheduler-7d9f-abcde_1234", renewed=NOW + timedelta(seconds=15)))
    assert f.is_leader


@pytest.mark.parametrize(
    "obj",
    [
        None,  # no Lease at all
        lease("other-pod_1234"),  # another replica's scheduler leads
        lease(""),  # released
        lease(None),
        lease("hami-scheduler-7d9f-abcde_1234", renewed=None),
        lease("hami-scheduler-7d9f-abcde_1234", duration=None),
        {
            "spec": {
                "holderIdentity": "hami-scheduler-7d9f-abcde_1",
                "renewTime": "garbage",
                "leaseDurationSeconds": 15,
            }
        },
    ],
)
def test_follows_otherwise(obj: dict[str, Any] | None) -> None:
    now = [NOW]
    f = follower(now)
    f.observe(lease("hami-scheduler-7d9f-abcde_1234"))
    assert f.is_leader
    f.observe(obj)
    assert not f.is_leader


def test_empty_prefix_is_refused() -> None:
    with pytest.raises(ValueError):
        LeaseFollower(None, namespace="n", name="l", holder_prefix="")  # type: ignore[arg-type]
