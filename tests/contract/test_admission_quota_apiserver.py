"""The webhook's quota gate on a real kube-apiserver: the ``hami webhook`` service (its ResourceQuota
informer, self-signed TLS) behind the shipped MutatingWebhookConfiguration denies, at pod creation,
a GPU pod whose own request can never fit its namespace's ``limits.nvidia.com/gpumem`` /
``limits.nvidia.com/gpucores``, with the namespace, resource, limit and what it asks; a pod at the
limit is admitted; a quota created, raised or deleted later is seen through the watch.
Needs the control-plane binaries (skipped without them unless HAMI_REQUIRE_INTEGRATION=1).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from hami.kube.client import KubeClient
from hami.kube.errors import ApiError
from hami.kube.paths import api_path
from hami.testing.controlplane import ControlPlane
from hami.testing.fixtures import control_plane, kube_client, kube_config  # noqa: F401
from hami.testing.stack import wait_for
from hami.testing.webhooks import create_until_admitted_by_webhook
from hami.webhook.runner import Webhook, WebhookSettings
from hami.webhook.server import runner_port

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "webhook.yaml"
MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
MEM, CORES = "nvidia.com/gpumem", "nvidia.com/gpucores"


def _pod(name: str, limits: dict[str, Any], init: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "busybox", "resources": {"limits": limits}}]
    }
    if init is not None:
        spec["initContainers"] = [{"name": "prep", "image": "busybox", "resources": {"limits": init}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


async def _create(kc: KubeClient, ns: str, pod: dict[str, Any]) -> dict[str, Any]:
    return await kc.create(api_path("v1", "pods", namespace=ns), pod)


async def _delete(kc: KubeClient, ns: str, pod: dict[str, Any]) -> None:
    await kc.delete(api_path("v1", "pods", namespace=ns, name=pod["metadata"]["name"]))


async def _denied(kc: KubeClient, ns: str, pod: dict[str, Any]) -> str:
    with pytest.raises(ApiError) as info:
        await _create(kc, ns, pod)
    assert info.value.status == 403
    return str(info.value)


async def test_webhook_denies_what_can_never_fit_the_quota(
    kube_client: KubeClient,  # noqa: F811
    control_plane: ControlPlane,  # noqa: F811
) -> None:
    kc = kube_client
    tag = uuid.uuid4().hex[:6]
    ns = f"whq-{tag}"
    await kc.create(api_path("v1", "namespaces"), {"metadata": {"name": ns}})
    quota_path = api_path("v1", "resourcequotas", namespace=ns)
    await kc.create(quota_path, {"metadata": {"name": "gpu"}, "spec": {"hard": {f"limits.{MEM}": "8000"}}})

    webhook = Webhook(
        WebhookSettings(
            host="127.0.0.1",
            port=0,
            hosts=["127.0.0.1"],
            kubeconfig=str(control_plane.kubeconfig_path),
            namespace_lookup=False,
        )
    )
    await webhook.start()
    try:
        assert webhook.quotas is not None and webhook._self_signed is not None and webhook._runner is not None
        await webhook.quotas.wait_synced(timeout=30)
        doc = yaml.safe_load(DEPLOY.read_text())
        doc["metadata"]["name"] = f"hami-webhook-q-{tag}"
        wh = doc["webhooks"][0]
        wh["clientConfig"] = {
            "url": f"https://127.0.0.1:{runner_port(webhook._runner)}/webhook",
            "caBundle": webhook._self_signed.ca_bundle,
        }
        wh["namespaceSelector"]["matchExpressions"].append(
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns]}
        )
        await kc.create(MWC, doc)
        try:
            # exactly at the limit: admitted (and mutated: the webhook is in the path)
            await create_until_admitted_by_webhook(
                lambda i: _create(kc, ns, _pod(f"at-{i}", {"nvidia.com/gpu": 1, MEM: "8000"})),
                lambda pod: pod["spec"]["schedulerName"] == "hami-scheduler",
                discard=lambda pod: _delete(kc, ns, pod),
            )
            # two cards of 4001: 8002 MiB of an 8000 limit, whatever the cluster holds
            why = await _denied(kc, ns, _pod("two", {"nvidia.com/gpu": 2, MEM: "4001"}))
            assert f"namespace {ns}: the pod asks 8002 MiB of limits.{MEM} but the limit is 8000" in why
            assert "ResourceQuota gpu" in why
            # an init container counts its own largest; app containers alone fit
            why = await _denied(
                kc, ns, _pod("init", {"nvidia.com/gpu": 1, MEM: "100"}, {"nvidia.com/gpu": 1, MEM: "9000"})
            )
            assert "asks 9000 MiB" in why

            # a quota raised and a new explicit 0 arrive through the watch
            q = await kc.get(api_path("v1", "resourcequotas", namespace=ns, name="gpu"))
            q["spec"]["hard"] = {f"limits.{MEM}": "20000", f"limits.{CORES}": "0"}
            await kc.replace(api_path("v1", "resourcequotas", namespace=ns, name="gpu"), q)

            async def cores_blocked() -> bool:
                assert webhook.quota is not None
                return bool(webhook.quota.ledger.limits.get(ns, {}).get(CORES))

            await wait_for(cores_blocked, timeout=30)
            await _create(kc, ns, _pod("two-ok", {"nvidia.com/gpu": 2, MEM: "4001"}))
            why = await _denied(kc, ns, _pod("cores", {"nvidia.com/gpu": 1, MEM: "100", CORES: "10"}))
            assert f"asks 10 percent of a card of limits.{CORES} but the limit is 0" in why

            # deleted: nothing limits the namespace any more
            await kc.delete(api_path("v1", "resourcequotas", namespace=ns, name="gpu"))

            async def unlimited() -> bool:
                assert webhook.quota is not None
                return not webhook.quota.ledger.limited(ns)

            await wait_for(unlimited, timeout=30)
            await _create(kc, ns, _pod("cores-ok", {"nvidia.com/gpu": 1, MEM: "100", CORES: "10"}))
        finally:
            await kc.delete(f"{MWC}/{doc['metadata']['name']}")
    finally:
        await webhook.stop()
