"""ResourceQuota events into the quota ledger, usage from pod events (restart rebuild, finished pods),
and HAMi's ``hami_resource_quota_limit`` / ``hami_resource_quota_used`` families."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_ledger_sync import annotated, gpu_node, pod

from hami.devices.registry import default_registry
from hami.extender.metrics import Metrics
from hami.extender.sync import LedgerSync
from hami.scheduling.decide import Scheduler

MEM = "nvidia.com/gpumem"


def resource_quota(hard: dict[str, Any], *, name: str = "gpu", ns: str = "ns") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hard": hard},
    }


def fresh_sync() -> LedgerSync:
    s = LedgerSync(Scheduler(default_registry()))
    s.node_changed(gpu_node("n1"))
    return s


def bound(sync: LedgerSync, name: str, mem: int) -> dict[str, Any]:
    """A pod another process decided and bound, as the API server shows it."""
    other = fresh_sync()
    d = other.scheduler.decide(pod(name, mem), candidates=["n1"])
    assert d.node == "n1"
    return annotated(pod(name, mem), dict(d.annotations), "n1")


def test_restart_rebuilds_usage_from_the_pods_in_either_order() -> None:
    a, b = bound(fresh_sync(), "a", 3000), bound(fresh_sync(), "b", 2000)
    # the extender starts its quota informer after the pods: the namespace counts them then
    s1 = fresh_sync()
    s1.pod_changed(a)
    s1.pod_changed(b)
    s1.quota_changed(resource_quota({f"limits.{MEM}": "6000"}))
    # and a quota seen first is charged as the pods come
    s2 = fresh_sync()
    s2.quota_changed(resource_quota({f"limits.{MEM}": "6000"}))
    s2.pod_changed(a)
    s2.pod_changed(b)
    for s in (s1, s2):
        assert s.scheduler.state.quota.used["ns"] == {MEM: 5000}
        d = s.scheduler.decide(pod("c", 1001), candidates=["n1"])
        assert d.node is None and "limit 6000, used 5000, asked 1001 MiB" in (d.reason or "")
        assert s.scheduler.decide(pod("c", 1000), candidates=["n1"]).node == "n1"


def test_finished_and_deleted_pods_release_their_quota() -> None:
    s = fresh_sync()
    s.quota_changed(resource_quota({f"limits.{MEM}": "8000"}))
    a, b = bound(s, "a", 3000), bound(s, "b", 2000)
    s.pod_changed(a)
    s.pod_changed(b)
    done = {**a, "status": {"phase": "Succeeded"}}
    s.pod_changed(done)
    assert s.scheduler.state.quota.used["ns"] == {MEM: 2000}
    s.pod_deleted(b)
    assert s.scheduler.state.quota.used["ns"] == {MEM: 0}


def test_quota_update_and_delete() -> None:
    s = fresh_sync()
    s.quota_changed(resource_quota({f"limits.{MEM}": "8000"}))
    s.quota_changed(resource_quota({f"limits.{MEM}": "100"}))
    assert s.scheduler.state.quota.limits["ns"][MEM].value == 100
    s.quota_deleted(resource_quota({}))
    assert not s.scheduler.state.quota.limited("ns")
    s.quota_changed(resource_quota({"pods": "10"}))  # nothing hami limits
    assert not s.scheduler.state.quota.limited("ns")


def test_metrics_have_hamis_names_and_labels() -> None:
    s = fresh_sync()
    s.quota_changed(resource_quota({f"limits.{MEM}": "8000", "limits.nvidia.com/gpucores": "50"}))
    s.pod_changed(bound(s, "a", 3000))
    text = generate_latest(Metrics(s.scheduler.state).registry).decode()
    got = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for fam in text_string_to_metric_families(text)
        if fam.name.startswith("hami_resource_quota")
        for sample in fam.samples
    }
    assert got == {
        ("hami_resource_quota_limit", (("namespace", "ns"), ("quota_name", MEM), ("zone", "vGPU"))): 8000,
        (
            "hami_resource_quota_limit",
            (("namespace", "ns"), ("quota_name", "nvidia.com/gpucores"), ("zone", "vGPU")),
        ): 50,
        (
            "hami_resource_quota_used",
            (("limit", "8000"), ("namespace", "ns"), ("quota_name", MEM), ("zone", "vGPU")),
        ): 3000,
        (
            "hami_resource_quota_used",
            (("limit", "50"), ("namespace", "ns"), ("quota_name", "nvidia.com/gpucores"), ("zone", "vGPU")),
        ): 0,
    }
