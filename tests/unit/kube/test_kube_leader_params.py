"""LeaderElector parameter validation (no API server needed)."""

from __future__ import annotations

import pytest

from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.leader import LeaderElector


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"identity": ""}, "identity"),
        ({"lease_duration": 1.0, "renew_deadline": 2.0}, "lease_duration > renew_deadline"),
        ({"renew_deadline": 1.0, "retry_period": 1.0}, "retry_period"),
    ],
)
def test_leader_elector_rejects_unsafe_timings(kwargs: dict[str, object], message: str) -> None:
    kc = KubeClient(KubeConfig(server="http://127.0.0.1:1"))
    args: dict[str, object] = {
        "identity": "me",
        "lease_duration": 15.0,
        "renew_deadline": 10.0,
        "retry_period": 2.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        LeaderElector(kc, namespace="n", name="l", **args)  # type: ignore[arg-type]


def test_leader_elector_defaults_are_client_go_defaults() -> None:
    e = LeaderElector(
        KubeClient(KubeConfig(server="http://127.0.0.1:1")), namespace="n", name="l", identity="me"
    )
    assert (e.lease_duration, e.renew_deadline, e.retry_period) == (15.0, 10.0, 2.0)
    assert not e.is_leader and e.leader_identity == ""
