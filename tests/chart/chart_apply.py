"""Installing a chart rendering into the test API server by server-side apply."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from chart_values import Rendered

from hami.kube.client import KubeClient
from hami.kube.errors import ConflictError, NotFoundError
from hami.kube.paths import api_path
from hami.testing.apply import Applier

Obj = dict[str, Any]

# Admitted with dryRun=All, never stored: once stored they would act on every other test sharing
# the API server (no webhook answers; the policy forbids the test identities hami's annotations).
DRY_RUN_KINDS = {
    "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


def _crd(group: str, kind: str, plural: str) -> Obj:
    """A CRD that accepts any spec: stands in for cert-manager's and the Prometheus operator's."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


THIRD_PARTY_CRDS = [
    _crd("cert-manager.io", "Issuer", "issuers"),
    _crd("cert-manager.io", "Certificate", "certificates"),
    _crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
]


async def ensure_namespace(kc: KubeClient, name: str) -> None:
    with contextlib.suppress(ConflictError):
        await kc.create(api_path("v1", "namespaces"), {"metadata": {"name": name}})


async def install(kc: KubeClient, r: Rendered, *, only_rbac: bool = False) -> list[Obj]:
    """Apply a rendering into its namespace; returns what the API server answered per object."""
    applier = Applier(kc, field_manager="hami-chart-test")
    await ensure_namespace(kc, r.values.namespace)
    if any(o["apiVersion"].startswith(("cert-manager.io/", "monitoring.coreos.com/")) for o in r.objects):
        for crd in THIRD_PARTY_CRDS:
            await applier.apply(crd)
            await wait_served(applier, f"{crd['spec']['group']}/v1", crd["spec"]["names"]["kind"])
    rbac = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    out = []
    for obj in r.objects:
        if only_rbac and obj["kind"] not in rbac:
            continue
        out.append(await applier.apply(obj, dry_run=obj["kind"] in DRY_RUN_KINDS))
    return out


async def wait_served(applier: Applier, api_version: str, kind: str) -> None:
    """Wait until discovery lists a just-created CRD's kind (the API server adds it asynchronously)."""
    for _ in range(200):
        try:
            await applier.resource(api_version, kind, refresh=True)
            return
        except NotFoundError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{kind} in {api_version} never became served")
