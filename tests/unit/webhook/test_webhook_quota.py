"""The webhook's quota gate: a GPU pod whose own request can never fit its namespace's device quota is
denied at admission, naming namespace, resource, limit and what it asks; anything that may fit passes."""

from __future__ import annotations

from typing import Any

import pytest

from hami.config import DeviceConfig, NvidiaConfig
from hami.devices import BackendRegistry
from hami.devices.nvidia import NvidiaBackend
from hami.protocol import keys
from hami.webhook.admission import AdmissionRequest
from hami.webhook.dra import DraPolicy
from hami.webhook.mutate import WebhookPolicy
from hami.webhook.quota import QuotaGate
from hami.webhook.server import decide

MEM, CORES, PCT = "nvidia.com/gpumem", "nvidia.com/gpucores", "nvidia.com/gpumem-percentage"


def ctr(name: str = "main", *, sidecar: bool = False, **limits: Any) -> dict[str, Any]:
    res = {{"gpu": "nvidia.com/gpu", "mem": MEM, "cores": CORES, "pct": PCT}[k]: v for k, v in limits.items()}
    c: dict[str, Any] = {"name": name, "image": "busybox", "resources": {"limits": res}}
    if sidecar:
        c["restartPolicy"] = "Always"
    return c


def pod(*containers: dict[str, Any], init: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers)}
    if init:
        spec["initContainers"] = list(init)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


def rq(hard: dict[str, Any], *, ns: str = "team-a", name: str = "gpu") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"hard": hard}}


def gate(*quotas: dict[str, Any], config: NvidiaConfig | None = None) -> QuotaGate:
    g = QuotaGate(BackendRegistry([NvidiaBackend(config)]))
    for q in quotas:
        g.quota_changed(q)
    return g


def test_exactly_at_the_limit_passes_one_mib_over_is_denied_with_every_number() -> None:
    g = gate(rq({f"limits.{MEM}": "8000"}))
    assert g.denials(pod(ctr(gpu=1, mem=8000)), "team-a") == []
    (why,) = g.denials(pod(ctr(gpu=1, mem=8001)), "team-a")
    assert why == (
        f"namespace team-a: the pod asks 8001 MiB of limits.{MEM} but the limit is 8000 "
        "(ResourceQuota gpu): it can never be scheduled"
    )
    # another namespace, and a namespace whose quota is gone, are not limited
    assert g.denials(pod(ctr(gpu=1, mem=8001)), "team-b") == []
    g.quota_deleted(rq({}))
    assert g.denials(pod(ctr(gpu=1, mem=8001)), "team-a") == []


def test_a_multi_card_request_counts_every_card() -> None:
    g = gate(rq({f"limits.{MEM}": "8000", f"limits.{CORES}": "100"}))
    assert g.denials(pod(ctr(gpu=2, mem=4000, cores=50)), "team-a") == []
    assert len(g.denials(pod(ctr(gpu=2, mem=4001, cores=51)), "team-a")) == 2  # both resources named
    (why,) = g.denials(pod(ctr(gpu=3, mem=1000, cores=40)), "team-a")
    assert f"asks 120 percent of a card of limits.{CORES} but the limit is 100" in why


def test_init_containers_count_their_largest_app_containers_and_sidecars_their_sum() -> None:
    g = gate(rq({f"limits.{MEM}": "6000"}))
    # init 6000 and 5000 run one after the other; the apps (3000 + 3000) run together
    fits = pod(
        ctr("a", gpu=1, mem=3000),
        ctr("b", gpu=1, mem=3000),
        init=(ctr("i1", gpu=1, mem=6000), ctr("i2", gpu=1, mem=5000)),
    )
    assert g.denials(fits, "team-a") == []
    assert g.denials(pod(ctr("a", gpu=1, mem=3000), init=(ctr("i", gpu=1, mem=6001),)), "team-a")
    assert g.denials(pod(ctr("a", gpu=1, mem=3000), ctr("b", gpu=1, mem=3001)), "team-a")
    # a native sidecar keeps running beside the app containers: it adds up with them
    sidecar = pod(ctr("a", gpu=1, mem=3000), init=(ctr("s", gpu=1, mem=3001, sidecar=True),))
    (why,) = g.denials(sidecar, "team-a")
    assert "asks 6001 MiB" in why


def test_a_percentage_counts_nothing_against_a_positive_limit_but_an_explicit_zero_denies_it() -> None:
    # its MiB depend on the card chosen: only the extender can tell
    assert gate(rq({f"limits.{MEM}": "1000"})).denials(pod(ctr(gpu=1, pct=50)), "team-a") == []
    (why,) = gate(rq({f"limits.{MEM}": "0"})).denials(pod(ctr(gpu=1, pct=50)), "team-a")
    assert f"asks a percentage of a card's memory of limits.{MEM} but the limit is 0" in why
    # a whole card (no memory given) is 100 percent of one
    assert gate(rq({f"limits.{MEM}": "0"})).denials(pod(ctr(gpu=1)), "team-a")


def test_an_explicit_zero_blocks_only_pods_asking_that_resource() -> None:
    g = gate(rq({f"limits.{CORES}": "0"}))
    (why,) = g.denials(pod(ctr(gpu=1, mem=1000, cores=1)), "team-a")
    assert f"asks 1 percent of a card of limits.{CORES} but the limit is 0" in why
    assert g.denials(pod(ctr(gpu=1, mem=1000)), "team-a") == []


def test_memory_factor_scales_the_limit_like_the_request() -> None:
    g = gate(rq({f"limits.{MEM}": "8"}), config=NvidiaConfig(memory_factor=1024))
    assert g.denials(pod(ctr(gpu=1, mem=8)), "team-a") == []
    (why,) = g.denials(pod(ctr(gpu=1, mem=9)), "team-a")
    assert "asks 9216 MiB" in why and "the limit is 8192" in why


def test_the_smallest_limit_wins_and_bad_entries_are_ignored() -> None:
    g = gate(
        rq({f"limits.{MEM}": "8000"}), rq({f"limits.{MEM}": "4000", f"limits.{CORES}": "lots"}, name="small")
    )
    (why,) = g.denials(pod(ctr(gpu=1, mem=4001, cores=90)), "team-a")
    assert "the limit is 4000 (ResourceQuota small)" in why


def test_nothing_is_denied_before_the_quota_cache_has_synced() -> None:
    synced = False
    g = QuotaGate(BackendRegistry([NvidiaBackend()]), synced=lambda: synced)
    g.quota_changed(rq({f"limits.{MEM}": "0"}))
    assert g.denials(pod(ctr(gpu=1, mem=1)), "team-a") == []
    synced = True
    assert g.denials(pod(ctr(gpu=1, mem=1)), "team-a")


def _request(obj: dict[str, Any], ns: str = "team-a") -> AdmissionRequest:
    return AdmissionRequest("admission.k8s.io/v1", "u", "Pod", "CREATE", ns, "p", obj, False)


async def test_the_webhook_denies_with_403_after_the_mutation_and_leaves_other_pods_alone() -> None:
    g = gate(rq({f"limits.{MEM}": "8000"}))
    policy = WebhookPolicy.default()
    d = await decide(_request(pod(ctr(gpu=1, mem=9000))), policy, quota=g.denials)
    assert not d.allowed and d.code == 403
    assert "namespace team-a" in d.message and f"limits.{MEM}" in d.message and "8000" in d.message
    # memory without a count: the webhook's default count (1) is what the quota sees
    d = await decide(_request(pod(ctr(mem=9000))), policy, quota=g.denials)
    assert not d.allowed and "asks 9000 MiB" in d.message
    ok = await decide(_request(pod(ctr(gpu=1, mem=8000))), policy, quota=g.denials)
    assert ok.allowed and ok.managed
    plain = pod({"name": "web", "image": "nginx"})
    assert (await decide(_request(plain), policy, quota=g.denials)).allowed


@pytest.mark.parametrize(
    "bad", [{"spec": {"hard": "x"}, "metadata": {"namespace": "team-a", "name": "q"}}, {}]
)
def test_a_malformed_resourcequota_limits_nothing(bad: dict[str, Any]) -> None:
    g = gate(bad)
    assert g.denials(pod(ctr(gpu=1, mem=100000)), "team-a") == []


async def test_a_pod_converted_to_dra_is_measured_before_conversion_and_creates_nothing() -> None:
    """DRA mode: the HAMi-style request is what the quota sees; a denied pod leaves no template."""
    g = gate(rq({f"limits.{MEM}": "8000"}))
    policy = WebhookPolicy.from_config(
        DeviceConfig.default(), dra=DraPolicy(default_mode=keys.OPERATING_MODE_DRA)
    )
    created: list[dict[str, Any]] = []

    async def create(obj: dict[str, Any]) -> None:
        created.append(obj)

    d = await decide(_request(pod(ctr(gpu=1, mem=9000))), policy, quota=g.denials, create_object=create)
    assert not d.allowed and d.code == 403 and "asks 9000 MiB" in d.message
    assert created == []
    ok = await decide(_request(pod(ctr(gpu=1, mem=8000))), policy, quota=g.denials, create_object=create)
    assert ok.allowed and [o["kind"] for o in created] == ["ResourceClaimTemplate"]
