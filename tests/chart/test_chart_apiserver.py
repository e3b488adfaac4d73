"""Every object charts/hami renders is accepted by the real kube-apiserver (server-side apply), and
each component's ServiceAccount can do what its code does and a sample of what it must not.

The admission objects (MutatingWebhookConfiguration, ValidatingAdmissionPolicy and its binding)
are applied with dryRun=All: validated and admitted like the rest but not stored, since once
stored they would act on every other test sharing this API server (no webhook is running to
answer, and the policy would forbid the test identities to write hami's annotations).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from chart_apply import DRY_RUN_KINDS, ensure_namespace, install
from chart_values import VALUE_SETS, Rendered

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.testing.apply import Applier, can_i, service_account_user

pytestmark = pytest.mark.integration

Render = Callable[[str], Rendered]
Obj = dict[str, Any]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
async def test_every_rendered_object_is_accepted(
    kube_client: KubeClient, rendered: Render, name: str
) -> None:
    r = rendered(name)
    answers = await install(kube_client, r)
    assert len(answers) == len(r.objects)
    applier = Applier(kube_client)
    for obj, answer in zip(r.objects, answers, strict=True):
        assert answer["kind"] == obj["kind"] and answer["metadata"]["name"] == obj["metadata"]["name"]
        if obj["kind"] in DRY_RUN_KINDS:
            continue
        stored = await kube_client.get(await applier.path(obj))
        assert stored["metadata"]["uid"] == answer["metadata"]["uid"]
        # the API server kept what the chart asked for (no field pruned as unknown)
        if "spec" in obj and obj["kind"] not in {"Issuer", "Certificate", "ServiceMonitor"}:
            _assert_subset(obj["spec"], stored["spec"], f"{obj['kind']}/{obj['metadata']['name']}.spec")
        if "data" in obj:
            assert stored["data"] == obj["data"]
        if "rules" in obj:
            assert stored["rules"] == obj["rules"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
async def test_workload_pods_pass_pod_admission(kube_client: KubeClient, rendered: Render, name: str) -> None:
    """Each pod template, created as a Pod (dryRun=All) so that pod admission runs on it: the
    scheduler pod under Pod Security "restricted", the node agents (root, hostPath) in a namespace
    that allows privileged pods, as docs/install.md asks of the release namespace."""
    r = rendered(name)
    await install(kube_client, r)  # what the pods refer to at admission (RuntimeClass)
    restricted = f"{r.values.namespace}-restricted"
    for ns, level in ((restricted, "restricted"), (r.values.namespace, "privileged")):
        labels = {"pod-security.kubernetes.io/enforce": level, "pod-security.kubernetes.io/warn": level}
        await ensure_namespace(kube_client, ns)
        await kube_client.merge_patch(api_path("v1", "namespaces", name=ns), {"metadata": {"labels": labels}})
    workloads = r.of_kind("Deployment") + r.of_kind("DaemonSet")
    assert workloads
    for w in workloads:
        ns = restricted if w["kind"] == "Deployment" else r.values.namespace
        template = w["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{w['metadata']['name']}-probe", "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        }
        await kube_client.create(api_path("v1", "pods", namespace=ns), pod, params={"dryRun": "All"})


def _assert_subset(want: Any, got: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        for k, v in want.items():
            if k not in got:  # the API server omits zero values (false, 0, "", {}, [])
                assert not v and v is not None, f"{where}.{k} was dropped by the API server"
                continue
            _assert_subset(v, got[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            _assert_subset(w, g, f"{where}[{i}]")
    else:
        assert want == got, f"{where}: {want!r} != {got!r}"


# ------------------------------------------------------------------------------------------- RBAC

# (verb, resource, group, namespace, name, subresource); namespace "<ns>" is the release namespace,
# name "<fullname>" is replaced by the chart's fullname.
Check = tuple[str, str, str, str | None, str | None, str | None]

ADMISSION = "admissionregistration.k8s.io"
PATCH_OWN_WEBHOOK_CONFIG: Check = (
    "patch",
    "mutatingwebhookconfigurations",
    ADMISSION,
    None,
    "<fullname>-webhook",
    None,
)

SCHEDULER_ALLOWED: list[Check] = [
    # extender: informers, filter-time annotations, bind, node lock, events
    ("list", "pods", "", None, None, None),
    ("watch", "pods", "", None, None, None),
    ("get", "pods", "", "tenant", "p", None),
    ("patch", "pods", "", "tenant", "p", None),
    ("create", "pods", "", "tenant", "p", "binding"),
    ("create", "pods", "", "tenant", "p", "eviction"),  # device-only preemption
    ("list", "nodes", "", None, None, None),
    ("watch", "nodes", "", None, None, None),
    ("get", "nodes", "", None, "n1", None),
    ("patch", "nodes", "", None, "n1", None),
    ("list", "resourcequotas", "", None, None, None),
    ("watch", "resourcequotas", "", None, None, None),
    ("get", "resourcequotas", "", "tenant", "gpu", None),
    ("create", "events", "", "tenant", None, None),
    ("patch", "events", "", "tenant", "e", None),
    # kube-scheduler: its Lease in the release namespace, the extender reads it
    ("create", "leases", "coordination.k8s.io", "<ns>", None, None),
    ("get", "leases", "coordination.k8s.io", "<ns>", "<scheduler>", None),
    ("update", "leases", "coordination.k8s.io", "<ns>", "<scheduler>", None),
    ("get", "configmaps", "", "kube-system", "extension-apiserver-authentication", None),
    ("list", "persistentvolumeclaims", "", None, None, None),
    ("list", "csinodes", "storage.k8s.io", None, None, None),
    ("update", "pods", "", "tenant", "p", "status"),
    # webhook: namespace labels, its own caBundle and CA Secret
    ("get", "namespaces", "", None, "tenant", None),
    (
        "get",
        "mutatingwebhookconfigurations",
        ADMISSION,
        None,
        "<fullname>-webhook",
        None,
    ),
    PATCH_OWN_WEBHOOK_CONFIG,
    ("get", "secrets", "", "<ns>", "<fullname>-webhook-ca", None),
    ("create", "secrets", "", "<ns>", None, None),
]

SCHEDULER_DENIED: list[Check] = [
    ("get", "secrets", "", "<ns>", "other", None),
    ("list", "secrets", "", "<ns>", None, None),
    ("get", "secrets", "", "tenant", "db-password", None),
    ("create", "secrets", "", "tenant", None, None),
    ("patch", "mutatingwebhookconfigurations", ADMISSION, None, "someone-elses", None),
    (
        "update",
        "validatingadmissionpolicies",
        ADMISSION,
        None,
        "<fullname>-protect-annotations",
        None,
    ),
    ("delete", "nodes", "", None, "n1", None),
    ("update", "nodes", "", None, "n1", None),
    ("update", "resourcequotas", "", "tenant", "gpu", None),
    ("create", "pods", "", "tenant", "p", "exec"),
    ("create", "pods", "", "tenant", None, None),
    ("update", "leases", "coordination.k8s.io", "kube-system", "kube-controller-manager", None),
    ("update", "leases", "coordination.k8s.io", "<ns>", "someone-elses", None),
    ("create", "clusterrolebindings", "rbac.authorization.k8s.io", None, None, None),
    ("create", "serviceaccounts", "", "<ns>", "<fullname>-scheduler", "token"),
    ("update", "configmaps", "", "<ns>", "<fullname>-device-config", None),
]

DEVICE_PLUGIN_ALLOWED: list[Check] = [
    ("get", "nodes", "", None, "n1", None),
    ("patch", "nodes", "", None, "n1", None),
    ("get", "pods", "", "tenant", "p", None),
    ("list", "pods", "", None, None, None),
    ("watch", "pods", "", None, None, None),  # its node's pods (lock-free mode)
    ("patch", "pods", "", "tenant", "p", None),
    ("create", "events", "", "tenant", None, None),
]

DEVICE_PLUGIN_DENIED: list[Check] = [
    ("delete", "nodes", "", None, "n1", None),
    ("list", "nodes", "", None, None, None),
    ("patch", "nodes", "", None, "n1", "status"),
    ("delete", "pods", "", "tenant", "p", None),
    ("create", "pods", "", "tenant", "p", "exec"),
    ("create", "pods", "", "tenant", "p", "binding"),
    ("get", "secrets", "", "<ns>", "<fullname>-webhook-ca", None),
    ("list", "secrets", "", None, None, None),
    PATCH_OWN_WEBHOOK_CONFIG,
    ("update", "leases", "coordination.k8s.io", "<ns>", "<scheduler>", None),
]

MONITOR_ALLOWED: list[Check] = [
    ("list", "pods", "", None, None, None),
    ("watch", "pods", "", None, None, None),
    ("get", "pods", "", "tenant", "p", None),
]

MONITOR_DENIED: list[Check] = [
    ("patch", "pods", "", "tenant", "p", None),
    ("patch", "nodes", "", None, "n1", None),
    ("list", "secrets", "", None, None, None),
    ("create", "events", "", "tenant", None, None),
]

WEBUI_ALLOWED: list[Check] = [
    ("list", "pods", "", None, None, None),
    ("watch", "pods", "", None, None, None),
    ("list", "nodes", "", None, None, None),
    ("watch", "nodes", "", None, None, None),
    ("list", "resourcequotas", "", None, None, None),
    ("watch", "resourcequotas", "", None, None, None),
    ("get", "pods", "", "tenant", "p", None),
]

# read-only, and nothing it does not show: no Secrets, no ConfigMaps, no exec, no logs, no events
WEBUI_DENIED: list[Check] = [
    ("patch", "pods", "", "tenant", "p", None),
    ("delete", "pods", "", "tenant", "p", None),
    ("patch", "nodes", "", None, "n1", None),
    ("list", "secrets", "", None, None, None),
    ("get", "secrets", "", "<ns>", "<fullname>-webhook-ca", None),
    ("list", "configmaps", "", None, None, None),
    ("create", "pods", "", "tenant", "p", "exec"),
    ("get", "pods", "", "tenant", "p", "log"),
    ("create", "events", "", "tenant", None, None),
    ("update", "resourcequotas", "", "tenant", "q", None),
]

# the cert-manager variant needs neither the CA Secret nor the caBundle patch
CERT_MANAGER_DENIED: list[Check] = [
    ("create", "secrets", "", "<ns>", None, None),
    ("get", "secrets", "", "<ns>", "hami-cm-webhook-ca", None),
    ("patch", "mutatingwebhookconfigurations", ADMISSION, None, "hami-cm-webhook", None),
]


async def _answers(kc: KubeClient, r: Rendered, sa: str, checks: list[Check]) -> dict[Check, bool]:
    user, groups = service_account_user(r.values.namespace, f"{r.values.fullname}-{sa}")
    sched = (r.values.values.get("schedulerName")) or "hami-scheduler"
    out: dict[Check, bool] = {}
    for check in checks:
        verb, resource, group, ns, name, sub = check

        def fill(s: str | None) -> str | None:
            if s is None:
                return None
            s = s.replace("<ns>", r.values.namespace).replace("<fullname>", r.values.fullname)
            return s.replace("<scheduler>", sched)

        out[check] = await can_i(
            kc,
            user,
            groups,
            verb,
            resource,
            group=group,
            namespace=fill(ns),
            name=fill(name),
            subresource=sub,
        )
    return out


async def _assert_rbac(
    kc: KubeClient, r: Rendered, sa: str, allowed: list[Check], denied: list[Check]
) -> None:
    got_allowed = await _answers(kc, r, sa, allowed)
    got_denied = await _answers(kc, r, sa, denied)
    assert [c for c, ok in got_allowed.items() if not ok] == [], f"{sa}: needed but denied"
    assert [c for c, ok in got_denied.items() if ok] == [], f"{sa}: not needed but allowed"


async def test_rbac_default(kube_client: KubeClient, rendered: Render) -> None:
    r = rendered("default")
    await install(kube_client, r, only_rbac=True)
    await _assert_rbac(kube_client, r, "scheduler", SCHEDULER_ALLOWED, SCHEDULER_DENIED)
    await _assert_rbac(kube_client, r, "device-plugin", DEVICE_PLUGIN_ALLOWED, DEVICE_PLUGIN_DENIED)
    # the monitor is on by default: it lists and watches pods, nothing more
    await _assert_rbac(kube_client, r, "monitor", MONITOR_ALLOWED, MONITOR_DENIED)
    # no web UI by default: its ServiceAccount has nothing
    await _assert_rbac(kube_client, r, "webui", [], WEBUI_ALLOWED)


async def test_rbac_with_monitor_and_other_names(kube_client: KubeClient, rendered: Render) -> None:
    r = rendered("full")
    await install(kube_client, r, only_rbac=True)
    await _assert_rbac(kube_client, r, "scheduler", SCHEDULER_ALLOWED, SCHEDULER_DENIED)
    await _assert_rbac(kube_client, r, "device-plugin", DEVICE_PLUGIN_ALLOWED, DEVICE_PLUGIN_DENIED)
    await _assert_rbac(kube_client, r, "monitor", MONITOR_ALLOWED, MONITOR_DENIED)
    await _assert_rbac(kube_client, r, "webui", WEBUI_ALLOWED, WEBUI_DENIED)


async def test_rbac_cert_manager(kube_client: KubeClient, rendered: Render) -> None:
    r = rendered("certmanager")
    await install(kube_client, r, only_rbac=True)
    webhook_self_signed = {
        c for c in SCHEDULER_ALLOWED if c[1] in {"secrets", "mutatingwebhookconfigurations"}
    }
    # this value set also switches preemption off: no Eviction API for the extender
    evict = {c for c in SCHEDULER_ALLOWED if c[5] == "eviction"}
    allowed = [c for c in SCHEDULER_ALLOWED if c not in webhook_self_signed | evict]
    denied = SCHEDULER_DENIED + CERT_MANAGER_DENIED + sorted(evict, key=str)
    await _assert_rbac(kube_client, r, "scheduler", allowed, denied)
