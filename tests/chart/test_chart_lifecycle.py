"""helm install, upgrade and uninstall of charts/hami against the real kube-apiserver, the way
docs/install.md tells an administrator to do it.

The admission policy is switched off and the webhook configuration narrowed to namespaces that
carry a label no namespace has: once stored, either would act on every other test sharing this API
server. test_chart_apiserver.py admits both unchanged (dry run).
"""

from __future__ import annotations

from typing import Any

import pytest
from chart_values import CHART

from hami.kube.client import KubeClient
from hami.kube.errors import NotFoundError
from hami.kube.paths import api_path
from hami.testing.controlplane import ControlPlane
from hami.testing.helm import Helm
from hami.webhook.tls import generate_self_signed, inject_ca_bundle

pytestmark = pytest.mark.integration

RELEASE, NS = "life", "chart-lifecycle"
QUIET: dict[str, Any] = {
    "scheduler": {"admissionWebhook": {"namespaceSelector": {"matchLabels": {"hami-test/none": "x"}}}},
    "admissionPolicy": {"enabled": False},
}
UPGRADED: dict[str, Any] = {
    **QUIET,
    "scheduler": {**QUIET["scheduler"], "replicas": 2},
    "devicePlugin": {"deviceSplitCount": 5},
}

DEPLOYMENT = api_path("apps/v1", "deployments", namespace=NS, name="life-hami-scheduler")
DEVICE_CONFIG = api_path("v1", "configmaps", namespace=NS, name="life-hami-device-config")
WEBHOOK_CONFIG = api_path(
    "admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", name="life-hami-webhook"
)
OBJECTS = [
    DEPLOYMENT,
    DEVICE_CONFIG,
    WEBHOOK_CONFIG,
    api_path("apps/v1", "daemonsets", namespace=NS, name="life-hami-device-plugin"),
    api_path("v1", "services", namespace=NS, name="life-hami-scheduler"),
    api_path("v1", "serviceaccounts", namespace=NS, name="life-hami-scheduler"),
    api_path("rbac.authorization.k8s.io/v1", "clusterroles", name="life-hami-scheduler"),
    api_path(
        "rbac.authorization.k8s.io/v1", "clusterrolebindings", name="life-hami-scheduler-kube-scheduler"
    ),
    api_path(
        "rbac.authorization.k8s.io/v1",
        "rolebindings",
        namespace="kube-system",
        name=f"life-hami-scheduler-{NS}-auth-reader",
    ),
]


async def _exists(kc: KubeClient, path: str) -> bool:
    try:
        await kc.get(path)
    except NotFoundError:
        return False
    return True


def _checksum(deployment: dict[str, Any]) -> str:
    return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/device-config"])


async def test_install_upgrade_uninstall(
    helm: Helm, control_plane: ControlPlane, kube_client: KubeClient
) -> None:
    kubeconfig = control_plane.kubeconfig_path
    helm.release("install", RELEASE, namespace=NS, kubeconfig=kubeconfig, chart=CHART, values=QUIET)
    assert [p for p in OBJECTS if not await _exists(kube_client, p)] == []
    dep = await kube_client.get(DEPLOYMENT)
    assert dep["spec"]["replicas"] == 1
    # what the webhook does at start-up: its CA into caBundle, as its own field manager
    bundle = generate_self_signed([f"life-hami-scheduler.{NS}.svc"]).ca_bundle
    assert await inject_ca_bundle(kube_client, "life-hami-webhook", bundle) == 1

    helm.release("upgrade", RELEASE, namespace=NS, kubeconfig=kubeconfig, chart=CHART, values=UPGRADED)
    upgraded = await kube_client.get(DEPLOYMENT)
    assert upgraded["spec"]["replicas"] == 2
    assert _checksum(upgraded) != _checksum(dep)  # a changed device config rolls the pods
    cm = await kube_client.get(DEVICE_CONFIG)
    assert "deviceSplitCount: 5" in cm["data"]["device-config.yaml"]
    pdb = api_path("policy/v1", "poddisruptionbudgets", namespace=NS, name="life-hami-scheduler")
    assert await _exists(kube_client, pdb)
    # the chart does not manage caBundle, so the upgrade keeps the webhook's
    mwc = await kube_client.get(WEBHOOK_CONFIG)
    assert mwc["webhooks"][0]["clientConfig"]["caBundle"] == bundle

    helm.release("uninstall", RELEASE, namespace=NS, kubeconfig=kubeconfig)
    assert [p for p in [*OBJECTS, pdb] if await _exists(kube_client, p)] == []
