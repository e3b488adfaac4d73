"""helm install, upgrade and uninstall of charts/hami against the real kube-apiserver, the way
docs/install.md tells an administrator to do it.

The webhook configuration and the admission policy are switched off here: once stored they would
act on every other test sharing this API server. test_chart_apiserver.py admits them (dry run).
"""

from __future__ import annotations

import pytest
from chart_values import CHART

from hami.kube.client import KubeClient
from hami.kube.errors import NotFoundError
from hami.kube.paths import api_path
from hami.testing.controlplane import ControlPlane
from hami.testing.helm import Helm

pytestmark = pytest.mark.integration

RELEASE, NS = "life", "chart-lifecycle"
QUIET = {"scheduler": {"admissionWebhook": {"enabled": False}}, "admissionPolicy": {"enabled": False}}

OBJECTS = [
    api_path("apps/v1", "deployments", namespace=NS, name="life-hami-scheduler"),
    api_path("apps/v1", "daemonsets", namespace=NS, name="life-hami-device-plugin"),
    api_path("v1", "configmaps", namespace=NS, name="life-hami-device-config"),
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


async def test_install_upgrade_uninstall(
    helm: Helm, control_plane: ControlPlane, kube_client: KubeClient
) -> None:
    kubeconfig = control_plane.kubeconfig_path
    helm.release("install", RELEASE, namespace=NS, kubeconfig=kubeconfig, chart=CHART, values=QUIET)
    assert [p for p in OBJECTS if not await _exists(kube_client, p)] == []
    dep = await kube_client.get(OBJECTS[0])
    assert dep["spec"]["replicas"] == 1
    before = dep["spec"]["template"]["metadata"]["annotations"]["checksum/device-config"]

    upgraded = {
        **QUIET,
        "scheduler": {**QUIET["scheduler"], "replicas": 2},
        "devicePlugin": {"deviceSplitCount": 5},
    }
    helm.release("upgrade", RELEASE, namespace=NS, kubeconfig=kubeconfig, chart=CHART, values=upgraded)
    dep = await kube_client.get(OBJECTS[0])
    assert dep["spec"]["replicas"] == 2
    # a changed device config rolls the pods
    assert dep["spec"]["template"]["metadata"]["annotations"]["checksum/device-config"] != before
    cm = await kube_client.get(OBJECTS[2])
    assert "deviceSplitCount: 5" in cm["data"]["device-config.yaml"]
    assert await _exists(
        kube_client, api_path("policy/v1", "poddisruptionbudgets", namespace=NS, name="life-hami-scheduler")
    )

    helm.release("uninstall", RELEASE, namespace=NS, kubeconfig=kubeconfig)
    assert [p for p in OBJECTS if await _exists(kube_client, p)] == []
