"""deploy/admission-policy.yaml against a real kube-apiserver: tenants cannot forge hami's keys.

The ValidatingAdmissionPolicy is applied as shipped; only its binding is scoped to the test's
namespace (and both objects get per-test names), so other tests are unaffected. Identities are
client certificates: a tenant ``tenant-<ns>`` with a Role on pods (plus pods/status, pods/binding
and bindings, so that the policy, not RBAC, is what stops it) and the two default allowed user
names ``system:serviceaccount:hami-system:hami-scheduler`` / ``...:hami-device-plugin``.
"""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import yaml

from hami.kube.client import KubeClient
from hami.kube.config import load_kubeconfig
from hami.kube.errors import ApiError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.testing.controlplane import ControlPlane, Process, SchedulerHandle
from hami.testing.gpucluster import gpu_pod
from hami.testing.pluginnode import PluginNode
from hami.testing.prereq import missing
from hami.testing.stack import Stack, wait_for

POLICY_FILE = Path(__file__).resolve().parents[2] / "deploy" / "admission-policy.yaml"
ADMISSION = "admissionregistration.k8s.io/v1"
RBAC = "rbac.authorization.k8s.io/v1"
SCHEDULER_USER = "system:serviceaccount:hami-system:hami-scheduler"
PLUGIN_USER = "system:serviceaccount:hami-system:hami-device-plugin"

PROTECTED_ANNOTATIONS = {
    keys.VGPU_NODE: "node-a",
    keys.VGPU_TIME: "1700000000",
    keys.VGPU_DEVICES_TO_ALLOCATE: "GPU-x,NVIDIA,15360,0:;",
    keys.VGPU_DEVICES_ALLOCATED: "GPU-x,NVIDIA,15360,0:;",
    keys.VGPU_MIG_ALLOCATIONS: "[]",
    keys.BIND_PHASE: "allocating",
    keys.BIND_TIME: "1700000000",
}


def load_policy() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(POLICY_FILE.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    return by_kind["ValidatingAdmissionPolicy"], by_kind["ValidatingAdmissionPolicyBinding"]


def pod(
    name: str,
    *,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    gpu: bool = False,
    node: str | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "busybox"}
    if gpu:
        container["resources"] = {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000"}}
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
        "spec": {"containers": [container]},
    }
    if node:
        body["spec"]["nodeName"] = node
    return body


async def denied(coro: Coroutine[Any, Any, Any]) -> ApiError:
    """Await ``coro``; it must be refused by the hami policy (not by RBAC); returns the error."""
    with pytest.raises(ApiError) as info:
        await coro
    err = info.value
    assert "ValidatingAdmissionPolicy" in err.message and "hami-protect-annotations" in err.message, err
    assert err.status == 403, err
    return err


class Env:
    """Admin, tenant, scheduler and device-plugin clients, all pointing at one namespace."""

    def __init__(
        self, ns: str, admin: KubeClient, tenant: KubeClient, scheduler: KubeClient, plugin: KubeClient
    ) -> None:
        self.ns = ns
        self.admin = admin
        self.tenant = tenant
        self.scheduler = scheduler
        self.plugin = plugin

    def pods(self, name: str | None = None, sub: str | None = None) -> str:
        return api_path("v1", "pods", namespace=self.ns, name=name, subresource=sub)

    async def create(self, client: KubeClient, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        return await client.create(self.pods(), body, params=params or None)

    async def legacy_bind(self, client: KubeClient, name: str, node: str, annotations: dict[str, str]) -> Any:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": self.ns, "annotations": annotations},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        return await client.create(api_path("v1", "bindings", namespace=self.ns), body)


async def install_policy(
    admin: KubeClient, ns: str, *, mutate: Callable[[dict[str, Any]], None] | None = None, suffix: str = ""
) -> Callable[[], Coroutine[Any, Any, None]]:
    """Create the shipped policy + a binding scoped to ``ns``; wait until it is enforced."""
    policy, binding = copy.deepcopy(load_policy())
    name = f"hami-protect-annotations-{ns}{suffix}"
    policy["metadata"]["name"] = name
    if mutate is not None:
        mutate(policy)
    binding["metadata"]["name"] = name
    binding["spec"]["policyName"] = name
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}
    }
    vap = api_path(ADMISSION, "validatingadmissionpolicies")
    vapb = api_path(ADMISSION, "validatingadmissionpolicybindings")

    async def remove() -> None:
        for path in (f"{vapb}/{name}", f"{vap}/{name}"):
            try:
                await admin.delete(path)
            except ApiError as exc:
                if exc.status != 404:
                    raise

    try:
        # The API server compiles every expression here (a syntax error is a 422); type-checking
        # warnings come from kube-controller-manager (test_policy_type_checks_without_warnings).
        await admin.create(vap, policy)
        await admin.create(vapb, binding)
        # Enforced once the API server's policy informers have both objects: a forged dry-run
        # create by the admin (system:masters is not on the allowed list) is then refused.
        probe = pod("probe", annotations={keys.BIND_PHASE: "allocating"})

        async def enforced() -> bool:
            try:
                await admin.create(api_path("v1", "pods", namespace=ns), probe, params={"dryRun": "All"})
            except ApiError as exc:
                return name in exc.message
            return False

        await wait_for(enforced, timeout=30)
    except BaseException:
        await remove()
        raise
    return remove


async def rbac(admin: KubeClient, ns: str) -> None:
    """Tenant: pods CRUD + status/binding; hami identities: what the scheduler/plugin use."""
    tenant_rules = [
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["get", "list", "create", "update", "patch", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["update", "patch"]},
        {"apiGroups": [""], "resources": ["pods/binding", "bindings"], "verbs": ["create"]},
    ]
    for role, users in (("tenant", [f"tenant-{ns}"]), ("hami", [SCHEDULER_USER, PLUGIN_USER])):
        await admin.create(
            api_path(RBAC, "roles", namespace=ns), {"metadata": {"name": role}, "rules": tenant_rules}
        )
        await admin.create(
            api_path(RBAC, "rolebindings", namespace=ns),
            {
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u} for u in users
                ],
            },
        )


@pytest.fixture
async def env(control_plane: ControlPlane, kube_client: KubeClient, namespace: str) -> AsyncIterator[Env]:
    await rbac(kube_client, namespace)
    clients = [
        KubeClient(load_kubeconfig(control_plane.kubeconfig_for(user)))
        for user in (f"tenant-{namespace}", SCHEDULER_USER, PLUGIN_USER)
    ]
    try:
        for c in clients:  # RBAC is served from an informer: wait until each identity may list pods

            async def allowed(c: KubeClient = c) -> bool:
                try:
                    await c.get(api_path("v1", "pods", namespace=namespace))
                except ApiError as exc:
                    if exc.status == 403:
                        return False
                    raise
                return True

            await wait_for(allowed, timeout=30)
        yield Env(namespace, kube_client, *clients)
    finally:
        for c in clients:
            await c.close()


@pytest.fixture
async def policy(env: Env) -> AsyncIterator[None]:
    remove = await install_policy(env.admin, env.ns)
    try:
        yield
    finally:
        await remove()


# ------------------------------------------------------------------------------------------ tests


async def test_policy_file_type_checks_and_is_cluster_wide() -> None:
    policy, binding = load_policy()
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert "matchResources" not in binding["spec"]  # every namespace
    allowed = policy["spec"]["variables"][0]
    assert allowed["name"] == "allowedUsers"  # docs and the kubectl patch in the file rely on index 0
    assert SCHEDULER_USER in allowed["expression"] and PLUGIN_USER in allowed["expression"]
    rules = policy["spec"]["matchConstraints"]["resourceRules"][0]
    assert set(rules["resources"]) == {"pods", "pods/status", "pods/binding", "bindings"}


async def test_tenant_cannot_forge_annotations_on_create(env: Env, policy: None) -> None:
    for key, value in PROTECTED_ANNOTATIONS.items():
        err = await denied(env.create(env.tenant, pod(f"forge-{len(key)}", annotations={key: value})))
        assert f"annotation {key} is written only by hami" in err.message
        assert f"tenant-{env.ns} may not set" in err.message
    # The webhook-ignore attack from the review, in one pod: every key at once is named.
    attack = pod(
        "attack",
        annotations=dict(PROTECTED_ANNOTATIONS),
        labels={"hami.io/webhook": "ignore", keys.VGPU_NODE: "node-a"},
    )
    err = await denied(env.create(env.tenant, attack))
    assert all(k in err.message for k in PROTECTED_ANNOTATIONS)
    # The API server reports the first failed validation only; the label has its own (below).
    # The label on its own.
    err = await denied(env.create(env.tenant, pod("lbl", labels={keys.VGPU_NODE: "node-a"})))
    assert f"label {keys.VGPU_NODE}" in err.message
    # A cluster admin is no exception (the allowed list names users, not groups).
    await denied(env.create(env.admin, pod("admin", annotations={keys.VGPU_DEVICES_ALLOCATED: "x"})))


async def test_tenant_cannot_create_gpu_pod_with_node_name(env: Env, policy: None) -> None:
    err = await denied(env.create(env.tenant, pod("pinned", gpu=True, node="node-a")))
    assert (
        "spec.nodeName node-a is set on a pod that asks for a device resource (nvidia.com/*)" in err.message
    )
    # Init containers count as well.
    p = pod("pinned-init", node="node-a")
    p["spec"]["initContainers"] = [
        {"name": "i", "image": "busybox", "resources": {"limits": {"nvidia.com/gpumem": "1000"}}}
    ]
    await denied(env.create(env.tenant, p))
    # The webhook-ignore label does not help.
    await denied(
        env.create(env.tenant, pod("ign", gpu=True, node="node-a", labels={"hami.io/webhook": "ignore"}))
    )


async def test_tenant_normal_pods_are_allowed(env: Env, policy: None) -> None:
    await env.create(env.tenant, pod("plain"))
    await env.create(env.tenant, pod("cpu-pinned", node="node-a"))  # nodeName without a GPU is fine
    await env.create(env.tenant, pod("gpu", gpu=True))  # a GPU pod left to the scheduler is fine
    # User-facing hami annotations and other hami.io labels stay writable.
    user_keys = {
        keys.GPU_SCHEDULER_POLICY: "binpack",
        keys.NODE_SCHEDULER_POLICY: "spread",
        keys.NVIDIA_USE_GPUTYPE: "A100",
        "hami.io/vgpu-something-else": "x",
    }
    await env.create(
        env.tenant, pod("user-keys", annotations=user_keys, labels={"hami.io/webhook": "ignore"})
    )
    await env.tenant.merge_patch(
        env.pods("plain"), {"metadata": {"annotations": {"team": "a"}, "labels": {"x": "y"}}}
    )


async def test_tenant_cannot_patch_hami_keys(env: Env, policy: None) -> None:
    # The scheduler identity creates a pod that already carries hami's decision.
    await env.create(
        env.scheduler, pod("p", annotations=dict(PROTECTED_ANNOTATIONS), labels={keys.VGPU_NODE: "node-a"})
    )
    await env.create(env.tenant, pod("clean", gpu=True))
    path = env.pods("p")
    for key in PROTECTED_ANNOTATIONS:
        # change, remove, and add on a pod that never had it
        err = await denied(env.tenant.merge_patch(path, {"metadata": {"annotations": {key: "forged"}}}))
        assert f"annotation {key} is written only by hami" in err.message
        await denied(env.tenant.merge_patch(path, {"metadata": {"annotations": {key: None}}}))
        await denied(
            env.tenant.merge_patch(env.pods("clean"), {"metadata": {"annotations": {key: "forged"}}})
        )
    await denied(env.tenant.merge_patch(path, {"metadata": {"labels": {keys.VGPU_NODE: "node-b"}}}))
    await denied(env.tenant.merge_patch(path, {"metadata": {"labels": {keys.VGPU_NODE: None}}}))
    await denied(env.tenant.merge_patch(env.pods("clean"), {"metadata": {"labels": {keys.VGPU_NODE: "x"}}}))
    # JSON patch and a full PUT are the same UPDATE.
    await denied(
        env.tenant.json_patch(
            path, [{"op": "replace", "path": "/metadata/annotations/hami.io~1bind-phase", "value": "success"}]
        )
    )
    current = await env.tenant.get(path)
    current["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED] = ""
    await denied(env.tenant.replace(path, current))
    # Through the status subresource, which also accepts metadata changes.
    await denied(
        env.tenant.merge_patch(
            env.pods("p", "status"), {"metadata": {"annotations": {keys.BIND_PHASE: "success"}}}
        )
    )
    # Leaving hami's keys alone while changing other things is allowed.
    await env.tenant.merge_patch(path, {"metadata": {"annotations": {"team": "a"}, "labels": {"app": "x"}}})
    await env.tenant.merge_patch(env.pods("p", "status"), {"metadata": {"annotations": {"note": "n"}}})
    final = await env.admin.get(path)
    assert final["metadata"]["annotations"] == {**PROTECTED_ANNOTATIONS, "team": "a", "note": "n"}


async def test_tenant_cannot_bind_with_hami_annotations(env: Env, policy: None) -> None:
    created = await env.create(env.tenant, pod("b1", gpu=True))
    uid = created["metadata"]["uid"]
    # The extender's path: pods/<name>/binding carrying the decision.
    err = await denied(
        env.tenant.bind_pod(env.ns, "b1", uid=uid, node="node-a", annotations=PROTECTED_ANNOTATIONS)
    )
    assert all(k in err.message for k in PROTECTED_ANNOTATIONS)
    await denied(
        env.tenant.bind_pod(env.ns, "b1", uid=uid, node="node-a", annotations={keys.BIND_PHASE: "allocating"})
    )
    # The legacy namespaced bindings endpoint merges annotations the same way.
    await denied(
        env.legacy_bind(env.tenant, "b1", "node-a", {keys.VGPU_DEVICES_TO_ALLOCATE: "GPU-x,NVIDIA,15360,0:;"})
    )
    p = await env.admin.get(env.pods("b1"))
    assert not p["spec"].get("nodeName")
    assert not set(p["metadata"].get("annotations") or {}) & set(PROTECTED_ANNOTATIONS)
    # A binding without hami's keys is not this policy's business.
    await env.tenant.bind_pod(env.ns, "b1", uid=uid, node="node-a", annotations={"team": "a"})
    assert (await env.admin.get(env.pods("b1")))["spec"]["nodeName"] == "node-a"


async def test_hami_identities_may_write_their_keys(env: Env, policy: None) -> None:
    # Scheduler: filter-time patch (annotations + label), then the bind with the decision.
    created = await env.create(env.tenant, pod("g", gpu=True))
    decision = {k: v for k, v in PROTECTED_ANNOTATIONS.items() if k not in (keys.BIND_PHASE, keys.BIND_TIME)}
    await env.scheduler.merge_patch(
        env.pods("g"), {"metadata": {"annotations": decision, "labels": {keys.VGPU_NODE: "node-a"}}}
    )
    await env.scheduler.bind_pod(
        env.ns,
        "g",
        uid=created["metadata"]["uid"],
        node="node-a",
        annotations={**decision, keys.BIND_PHASE: "allocating", keys.BIND_TIME: "1700000001"},
    )
    p = await env.admin.get(env.pods("g"))
    assert p["spec"]["nodeName"] == "node-a"
    assert p["metadata"]["annotations"][keys.BIND_PHASE] == "allocating"
    assert p["metadata"]["labels"][keys.VGPU_NODE] == "node-a"
    # Device plugin: erase the consumed entry and record success.
    await env.plugin.merge_patch(
        env.pods("g"),
        {"metadata": {"annotations": {keys.VGPU_DEVICES_TO_ALLOCATE: ";;", keys.BIND_PHASE: "success"}}},
    )
    p = await env.admin.get(env.pods("g"))
    assert p["metadata"]["annotations"][keys.BIND_PHASE] == "success"
    # Legacy bindings endpoint, and a GPU pod created straight onto a node, also pass for hami.
    await env.create(env.tenant, pod("g2", gpu=True))
    await env.legacy_bind(env.scheduler, "g2", "node-a", {keys.BIND_PHASE: "allocating"})
    await env.create(
        env.scheduler, pod("g3", gpu=True, node="node-a", annotations=dict(PROTECTED_ANNOTATIONS))
    )
    # The tenant may still edit unrelated metadata of such a pod afterwards.
    await env.tenant.merge_patch(env.pods("g"), {"metadata": {"labels": {"app": "x"}}})


async def test_allowed_users_list_is_the_parameter(env: Env, policy: None) -> None:
    """The JSON patch of /spec/variables/0/expression from docs/webhook.md changes who may write."""
    name = f"hami-protect-annotations-{env.ns}"
    forged = {keys.BIND_PHASE: "allocating"}
    await denied(env.create(env.tenant, pod("before", annotations=forged)))
    await env.admin.json_patch(
        api_path(ADMISSION, "validatingadmissionpolicies", name=name),
        [
            {"op": "test", "path": "/spec/variables/0/name", "value": "allowedUsers"},
            {"op": "replace", "path": "/spec/variables/0/expression", "value": f"['tenant-{env.ns}']"},
        ],
    )

    async def tenant_allowed() -> bool:
        try:
            await env.create(env.tenant, pod("after", annotations=forged), dryRun="All")
        except ApiError as exc:
            if name in exc.message:
                return False
            raise
        return True

    await wait_for(tenant_allowed, timeout=30)
    await env.create(env.tenant, pod("after", annotations=forged))
    await denied(env.create(env.scheduler, pod("now-denied", annotations=forged)))


async def test_binding_and_status_bypass_a_policy_on_pods_alone(env: Env) -> None:
    """Why the policy also matches pods/status, pods/binding and bindings (real API server).

    With the rule narrowed to the ``pods`` resource, annotations written through a Binding are
    merged into the pod without any pod UPDATE admission, and the status subresource changes
    metadata too: all three paths get forged keys through.
    """

    def pods_only(policy: dict[str, Any]) -> None:
        policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] = ["pods"]

    remove = await install_policy(env.admin, env.ns, mutate=pods_only, suffix="-narrow")
    try:
        # The narrowed policy is in force for plain pod writes (install_policy waited for that),
        # yet a Binding carries the forged decision straight onto the pod,
        a = await env.create(env.tenant, pod("a", gpu=True))
        await env.tenant.bind_pod(
            env.ns, "a", uid=a["metadata"]["uid"], node="node-a", annotations=PROTECTED_ANNOTATIONS
        )
        got = (await env.admin.get(env.pods("a")))["metadata"]["annotations"]
        assert {k: got.get(k) for k in PROTECTED_ANNOTATIONS} == PROTECTED_ANNOTATIONS
        # the legacy bindings endpoint does the same,
        await env.create(env.tenant, pod("b", gpu=True))
        await env.legacy_bind(env.tenant, "b", "node-a", {keys.BIND_PHASE: "allocating"})
        assert (await env.admin.get(env.pods("b")))["metadata"]["annotations"][
            keys.BIND_PHASE
        ] == "allocating"
        # and so does the status subresource.
        await env.tenant.merge_patch(
            env.pods("a", "status"), {"metadata": {"annotations": {keys.BIND_PHASE: "success"}}}
        )
        assert (await env.admin.get(env.pods("a")))["metadata"]["annotations"][keys.BIND_PHASE] == "success"
    finally:
        await remove()


def _controller_manager(control_plane: ControlPlane) -> Path | None:
    env_path = os.environ.get("HAMI_KUBE_CONTROLLER_MANAGER")
    path = (
        Path(env_path)
        if env_path
        else control_plane.binaries.kube_apiserver.parent / "kube-controller-manager"
    )
    return path if os.access(path, os.X_OK) else None


async def test_policy_type_checks_without_warnings(
    control_plane: ControlPlane, kube_client: KubeClient
) -> None:
    """kube-controller-manager's type checker finds nothing (against Pod and Binding alike).

    Needs a kube-controller-manager binary (``$HAMI_KUBE_CONTROLLER_MANAGER``, or next to
    kube-apiserver, where ``hack/build-k8s.sh`` puts it); required when HAMI_REQUIRE_INTEGRATION=1.
    """
    kcm = _controller_manager(control_plane)
    if kcm is None:
        message = "no kube-controller-manager binary (hack/build-k8s.sh builds it; or set HAMI_KUBE_CONTROLLER_MANAGER)"
        missing(message, integration=True)
    proc = Process(
        "kube-controller-manager",
        [
            str(kcm),
            f"--kubeconfig={control_plane.kubeconfig_path}",
            "--controllers=validatingadmissionpolicy-status-controller",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
        ],
        control_plane.logdir / "kube-controller-manager.log",
    )
    policy, _ = copy.deepcopy(load_policy())
    name = f"hami-protect-annotations-typecheck-{uuid.uuid4().hex[:6]}"
    policy["metadata"]["name"] = name
    path = api_path(ADMISSION, "validatingadmissionpolicies", name=name)
    await kube_client.create(api_path(ADMISSION, "validatingadmissionpolicies"), policy)
    try:

        async def checked() -> dict[str, Any] | None:
            assert proc.alive, proc.tail()
            obj = await kube_client.get(path)
            status = bodies.status(obj)
            return status if status.get("observedGeneration") == obj["metadata"]["generation"] else None

        status = await wait_for(checked, timeout=60)
        assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status
    finally:
        proc.stop()
        await kube_client.delete(path)


async def test_hami_runs_unimpeded_under_the_policy(
    control_plane: ControlPlane,
    env: Env,
    policy: None,
    start_scheduler: Callable[..., SchedulerHandle],
    tmp_path: Path,
) -> None:
    """The real chain, each component as its allowed identity: the extender (filter patch, lock,
    Binding with annotations) as hami-scheduler, the node agent (registration, Allocate's
    annotation update and bind-phase=success) as hami-device-plugin; the pod is the tenant's."""
    crb = api_path(RBAC, "clusterrolebindings", name=f"hami-admission-test-{env.ns}")
    await env.admin.create(
        api_path(RBAC, "clusterrolebindings"),
        {
            "metadata": {"name": f"hami-admission-test-{env.ns}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u}
                for u in (SCHEDULER_USER, PLUGIN_USER)
            ],
        },
    )
    try:
        name = f"{env.ns}-dp"[:63]
        fake = tmp_path / "fake-node.yaml"
        cards = [
            {"uuid": f"GPU-{name}-{i}", "index": i, "model": "NVIDIA A100-SXM4-40GB", "memory": 16384}
            for i in range(2)
        ]
        fake.write_text(yaml.safe_dump({"cards": cards}))

        async def can_list_nodes() -> bool:
            try:
                await env.plugin.get(api_path("v1", "nodes"))
            except ApiError as exc:
                if exc.status == 403:
                    return False
                raise
            return True

        await wait_for(can_list_nodes, timeout=30)
        node = PluginNode(env.plugin, name, fake, labels={"hami-test": env.ns}, split_count=4)
        scheduler_config = load_kubeconfig(control_plane.kubeconfig_for(SCHEDULER_USER))
        async with node, Stack(scheduler_config, start_scheduler, completer=False):
            body = gpu_pod("infer", mem=3000, cores=30)
            body["spec"]["nodeSelector"] = {"hami-test": env.ns}
            await env.create(env.tenant, body)

            async def bound() -> dict[str, Any] | None:
                p = await env.admin.get(env.pods("infer"))
                return p if bodies.node_name(p) else None

            p = await wait_for(bound, timeout=60, interval=0.1)
            ann = p["metadata"]["annotations"]
            assert p["spec"]["nodeName"] == name and ann[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
            assert ann[keys.VGPU_NODE] == name and p["metadata"]["labels"][keys.VGPU_NODE] == name
            admissions = await node.admit(env.ns, "infer")
            assert [a.container for a in admissions] == ["main"]
            after = await env.admin.get(env.pods("infer"))
            assert after["metadata"]["annotations"][keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
            # ... and the tenant still cannot touch the result.
            await denied(
                env.tenant.merge_patch(
                    env.pods("infer"), {"metadata": {"annotations": {keys.VGPU_DEVICES_ALLOCATED: None}}}
                )
            )
    finally:
        await env.admin.delete(crb)
