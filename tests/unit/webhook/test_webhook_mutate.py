"""Every mutation and deny rule of :func:`hami.webhook.mutate.mutate_pod`, checked by applying the patch."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hami.config import DeviceConfig, parse_device_config
from hami.webhook.mutate import AdmissionDecision, WebhookPolicy, escape_pointer, mutate_pod

GPU = "nvidia.com/gpu"
MEM = "nvidia.com/gpumem"
PCT = "nvidia.com/gpumem-percentage"
CORES = "nvidia.com/gpucores"
PRIO = "nvidia.com/priority"


def policy(yaml_text: str | None = None, **kw: Any) -> WebhookPolicy:
    cfg = DeviceConfig.default() if yaml_text is None else parse_device_config(yaml_text)[0]
    return WebhookPolicy.from_config(cfg, **kw)


def ctr(name: str = "main", limits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "busybox"}
    if limits is not None:
        c["resources"] = {"limits": limits}
    c.update(extra)
    return c


def pod(*containers: dict[str, Any], init: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "p-", "namespace": "team-a"},
        "spec": {"containers": list(containers), "schedulerName": "default-scheduler", **spec},
    }
    if init is not None:
        p["spec"]["initContainers"] = init
    return p


def run(
    p: dict[str, Any],
    pol: WebhookPolicy | None = None,
    *,
    namespace: str = "team-a",
    ns_labels: dict[str, str] | None = None,
) -> tuple[AdmissionDecision, dict[str, Any]]:
    original = copy.deepcopy(p)
    d = mutate_pod(p, namespace=namespace, namespace_labels=ns_labels, policy=pol or policy())
    assert p == original, "mutate_pod must not modify its input"
    patched = jsonpatch.apply_patch(p, list(d.patch)) if d.patch else copy.deepcopy(p)
    return d, patched


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


# ------------------------------------------------------------------------------------- skipping


def test_pod_labelled_ignore_is_skipped_even_when_invalid() -> None:
    p = pod(ctr(limits={GPU: "-1"}))
    p["metadata"]["labels"] = {"hami.io/webhook": "ignore"}
    d, _ = run(p)
    assert d.allowed and d.skipped and not d.patch


def test_namespace_labelled_ignore_is_skipped() -> None:
    d, _ = run(pod(ctr(limits={GPU: 1})), ns_labels={"hami.io/webhook": "ignore"})
    assert d.allowed and d.skipped and not d.patch
    assert "namespace 'team-a'" in d.reason


def test_other_label_values_are_not_skipped() -> None:
    d, out = run(pod(ctr(limits={GPU: 1})), ns_labels={"hami.io/webhook": "enabled"})
    assert not d.skipped and out["spec"]["schedulerName"] == "hami-scheduler"


def test_foreign_scheduler_is_skipped() -> None:
    d, _ = run(pod(ctr(limits={GPU: 1}), schedulerName="volcano"))
    assert d.allowed and d.skipped and not d.patch
    assert "volcano" in d.reason


def test_default_scheduler_is_taken_over_by_default() -> None:
    d, out = run(pod(ctr(limits={GPU: 1})))
    assert d.allowed and out["spec"]["schedulerName"] == "hami-scheduler"
    assert {"op": "replace", "path": "/spec/schedulerName", "value": "hami-scheduler"} in d.patch


def test_default_scheduler_left_alone_without_force_overwrite() -> None:
    d, _ = run(pod(ctr(limits={GPU: 1})), policy(force_overwrite_default_scheduler=False))
    assert d.skipped and not d.patch


def test_missing_scheduler_name_is_added() -> None:
    p = pod(ctr(limits={GPU: 1}))
    del p["spec"]["schedulerName"]
    d, out = run(p)
    assert {"op": "add", "path": "/spec/schedulerName", "value": "hami-scheduler"} in d.patch
    assert out["spec"]["schedulerName"] == "hami-scheduler"


def test_configured_scheduler_name_is_used() -> None:
    _d, out = run(pod(ctr(limits={GPU: 1})), policy("hami:\n  schedulerName: gpu-sched\n"))
    assert out["spec"]["schedulerName"] == "gpu-sched"


def test_pod_already_on_our_scheduler_gets_no_scheduler_patch() -> None:
    d, _ = run(pod(ctr(limits={GPU: 1, CORES: 30}), schedulerName="hami-scheduler"))
    assert d.allowed and not any(op["path"] == "/spec/schedulerName" for op in d.patch)


# ------------------------------------------------------------------------------------ structure


def test_no_containers_is_denied() -> None:
    d, _ = run(pod())
    assert not d.allowed and d.message == "pod has no containers" and d.code == 400


def test_no_spec_is_denied() -> None:
    d = mutate_pod({"metadata": {}}, namespace="x", namespace_labels=None, policy=policy())
    assert not d.allowed and "no spec" in d.message


def test_pod_without_managed_resources_is_untouched() -> None:
    d, out = run(pod(ctr(limits={"cpu": "1", "memory": "1Gi"})))
    assert d.allowed and not d.skipped and not d.patch and not d.managed
    assert out["spec"]["schedulerName"] == "default-scheduler"


# ------------------------------------------------------------------------------------- defaults


def test_escape_pointer() -> None:
    assert escape_pointer("nvidia.com/gpu") == "nvidia.com~1gpu"
    assert escape_pointer("a~b/c") == "a~0b~1c"


def test_count_added_when_only_memory_given() -> None:
    d, out = run(pod(ctr(limits={MEM: "3000"})))
    assert {
        "op": "add",
        "path": "/spec/containers/0/resources/limits/nvidia.com~1gpu",
        "value": "1",
    } in d.patch
    assert out["spec"]["containers"][0]["resources"]["limits"] == {MEM: "3000", GPU: "1"}
    assert CORES not in out["spec"]["containers"][0]["resources"]["limits"]  # not a whole card


@pytest.mark.parametrize("res", [CORES, PCT])
def test_count_added_when_only_cores_or_percentage_given(res: str) -> None:
    _, out = run(pod(ctr(limits={res: "50"})))
    assert out["spec"]["containers"][0]["resources"]["limits"][GPU] == "1"


def test_count_uses_default_gpu_num() -> None:
    _, out = run(pod(ctr(limits={MEM: "3000"})), policy("nvidia:\n  defaultGPUNum: 2\n"))
    assert out["spec"]["containers"][0]["resources"]["limits"][GPU] == "2"


def test_memory_without_count_denied_when_default_gpu_num_is_zero() -> None:
    d, _ = run(pod(ctr("trainer", limits={MEM: "3000"})), policy("nvidia:\n  defaultGPUNum: 0\n"))
    assert not d.allowed
    assert "container 'trainer'" in d.message and GPU in d.message and "defaultGPUNum is 0" in d.message


def test_whole_card_request_gets_exclusive_cores() -> None:
    d, out = run(pod(ctr(limits={GPU: 1})))
    assert {
        "op": "add",
        "path": "/spec/containers/0/resources/limits/nvidia.com~1gpucores",
        "value": "100",
    } in d.patch
    assert out["spec"]["containers"][0]["resources"]["limits"] == {GPU: 1, CORES: "100"}


def test_hundred_percent_memory_gets_exclusive_cores() -> None:
    _, out = run(pod(ctr(limits={GPU: 1, PCT: "100"})))
    assert out["spec"]["containers"][0]["resources"]["limits"][CORES] == "100"


@pytest.mark.parametrize(
    "limits",
    [{GPU: 1, CORES: "20"}, {GPU: 1, MEM: "1000"}, {GPU: 1, PCT: "50"}, {GPU: 1, CORES: "0"}],
)
def test_partial_requests_get_no_exclusive_cores(limits: dict[str, Any]) -> None:
    d, out = run(pod(ctr(limits=limits)))
    assert out["spec"]["containers"][0]["resources"]["limits"] == limits
    assert [op["path"] for op in d.patch] == ["/spec/schedulerName"]


def test_default_memory_means_no_exclusive_cores() -> None:
    _, out = run(pod(ctr(limits={GPU: 1})), policy("nvidia:\n  defaultMemory: 2000\n"))
    assert CORES not in out["spec"]["containers"][0]["resources"]["limits"]


def test_count_in_requests_only_is_not_duplicated_into_limits() -> None:
    c = {"name": "c", "resources": {"requests": {GPU: "1", CORES: "10"}}}
    _, out = run(pod(c))
    assert out["spec"]["containers"][0]["resources"] == {"requests": {GPU: "1", CORES: "10"}}


def test_resources_and_limits_objects_are_created_when_missing() -> None:
    c = {"name": "c", "resources": {"requests": {MEM: "100"}}}
    d, out = run(pod(c))
    assert {"op": "add", "path": "/spec/containers/0/resources/limits", "value": {GPU: "1"}} in d.patch
    assert out["spec"]["containers"][0]["resources"] == {"requests": {MEM: "100"}, "limits": {GPU: "1"}}


def test_null_resources_are_replaced() -> None:
    c = {"name": "c", "resources": None, "env": None}
    _, out = run(pod(c, ctr("g", limits={GPU: 1})), policy("nvidia:\n  overwriteEnv: true\n"))
    assert out["spec"]["containers"][0]["env"] == [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"}]


def test_priority_becomes_env() -> None:
    d, out = run(pod(ctr(limits={GPU: 1, CORES: "10", PRIO: "0"}, env=[{"name": "A", "value": "b"}])))
    assert {
        "op": "add",
        "path": "/spec/containers/0/env/-",
        "value": {"name": "CUDA_TASK_PRIORITY", "value": "0"},
    } in d.patch
    assert env(out["spec"]["containers"][0]) == {"A": "b", "CUDA_TASK_PRIORITY": "0"}


def test_priority_env_creates_env_list() -> None:
    d, out = run(pod(ctr(limits={GPU: 1, PRIO: "1"})))
    assert {
        "op": "add",
        "path": "/spec/containers/0/env",
        "value": [{"name": "CUDA_TASK_PRIORITY", "value": "1"}],
    } in d.patch
    assert env(out["spec"]["containers"][0]) == {"CUDA_TASK_PRIORITY": "1"}


def test_priority_env_replaces_users_value_with_warning() -> None:
    c = ctr(limits={GPU: 1, PRIO: "1"}, env=[{"name": "CUDA_TASK_PRIORITY", "value": "0"}])
    d, out = run(pod(c))
    assert out["spec"]["containers"][0]["env"] == [{"name": "CUDA_TASK_PRIORITY", "value": "1"}]
    assert any("CUDA_TASK_PRIORITY" in w for w in d.warnings)


def test_core_policy_env_when_not_default() -> None:
    _, out = run(pod(ctr(limits={GPU: 1}), ctr("cpu")), policy("nvidia:\n  gpuCorePolicy: force\n"))
    assert env(out["spec"]["containers"][0])["GPU_CORE_UTILIZATION_POLICY"] == "force"
    assert "env" not in out["spec"]["containers"][1]  # GPU-less container untouched


def test_no_core_policy_env_by_default() -> None:
    _, out = run(pod(ctr(limits={GPU: 1})))
    assert "env" not in out["spec"]["containers"][0]


def test_core_policy_overrides_tenant_default_value() -> None:
    c = ctr(limits={GPU: 1}, env=[{"name": "GPU_CORE_UTILIZATION_POLICY", "value": "default"}])
    _, out = run(pod(c), policy("nvidia:\n  gpuCorePolicy: force\n"))
    assert out["spec"]["containers"][0]["env"] == [{"name": "GPU_CORE_UTILIZATION_POLICY", "value": "force"}]


def test_visible_devices_none_for_gpu_less_containers_with_overwrite_env() -> None:
    p = pod(ctr("gpu", limits={GPU: 1}), ctr("sidecar"), init=[ctr("init")])
    _d, out = run(p, policy("nvidia:\n  overwriteEnv: true\n"))
    assert env(out["spec"]["initContainers"][0]) == {"NVIDIA_VISIBLE_DEVICES": "none"}
    assert env(out["spec"]["containers"][1]) == {"NVIDIA_VISIBLE_DEVICES": "none"}
    assert "NVIDIA_VISIBLE_DEVICES" not in env(out["spec"]["containers"][0])


def test_visible_devices_none_replaces_all() -> None:
    c = ctr("cpu", env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])
    d, out = run(pod(c), policy("nvidia:\n  overwriteEnv: true\n"))
    assert out["spec"]["containers"][0]["env"] == [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "none"}]
    assert d.warnings and not d.managed
    assert out["spec"]["schedulerName"] == "default-scheduler"  # no GPU: not redirected


def test_no_visible_devices_env_without_overwrite_env() -> None:
    d, _ = run(pod(ctr("cpu")))
    assert not d.patch


def test_runtime_class_set_when_configured_and_unset() -> None:
    pol = policy("nvidia:\n  runtimeClassName: nvidia\n")
    _d, out = run(pod(ctr(limits={GPU: 1})), pol)
    assert out["spec"]["runtimeClassName"] == "nvidia"
    _, out2 = run(pod(ctr(limits={GPU: 1}), runtimeClassName="kata"), pol)
    assert out2["spec"]["runtimeClassName"] == "kata"
    _d3, out3 = run(pod(ctr("cpu")), pol)
    assert "runtimeClassName" not in out3["spec"]


def test_init_containers_are_mutated_at_their_own_paths() -> None:
    p = pod(ctr("app", limits={CORES: "10"}), init=[ctr("warmup", limits={MEM: "500"})])
    d, out = run(p)
    assert out["spec"]["initContainers"][0]["resources"]["limits"][GPU] == "1"
    assert out["spec"]["containers"][0]["resources"]["limits"][GPU] == "1"
    paths = [op["path"] for op in d.patch]
    assert paths.index("/spec/initContainers/0/resources/limits/nvidia.com~1gpu") < paths.index(
        "/spec/containers/0/resources/limits/nvidia.com~1gpu"
    )


def test_custom_resource_names_are_escaped() -> None:
    yaml_text = "nvidia:\n  resourceCountName: example.com/vgpu\n  resourceMemoryName: example.com/vmem\n"
    _, out = run(pod(ctr(limits={"example.com/vmem": "10"})), policy(yaml_text))
    assert out["spec"]["containers"][0]["resources"]["limits"]["example.com/vgpu"] == "1"


def test_zero_gpus_is_not_managed() -> None:
    d, _out = run(pod(ctr(limits={GPU: "0"})))
    assert d.allowed and not d.managed and not d.patch


# ---------------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    ("limits", "resource", "fragment"),
    [
        ({GPU: "-1"}, GPU, "negative"),
        ({GPU: "1", MEM: "lots"}, MEM, ""),
        ({GPU: "1", PCT: "150"}, PCT, "more than 100"),
        ({GPU: "1", CORES: "101"}, CORES, "more than 100"),
        ({GPU: "1", MEM: "1.5"}, MEM, ""),
    ],
)
def test_invalid_requests_are_denied_naming_container_resource_reason(
    limits: dict[str, Any], resource: str, fragment: str
) -> None:
    d, _ = run(pod(ctr("trainer", limits=limits)))
    assert not d.allowed and d.code == 400
    assert "container 'trainer'" in d.message and resource in d.message and fragment in d.message


def test_every_invalid_container_is_reported() -> None:
    d, _ = run(
        pod(ctr("a", limits={GPU: "-1"}), ctr("b", limits={CORES: "900"}), init=[ctr("i", limits={PCT: "x"})])
    )
    assert not d.allowed
    for name in ("'a'", "'b'", "'i'"):
        assert f"container {name}" in d.message


def test_container_not_an_object_is_denied() -> None:
    d, _ = run(pod("oops"))  # type: ignore[arg-type]
    assert not d.allowed and "spec.containers[0]" in d.message


# ------------------------------------------------------------------------------ managed-pod rules


def test_privileged_container_in_gpu_pod_is_denied() -> None:
    p = pod(ctr("gpu", limits={GPU: 1}), ctr("debug", securityContext={"privileged": True}))
    d, _ = run(p)
    assert not d.allowed and d.code == 403
    assert "container 'debug'" in d.message and "securityContext.privileged" in d.message


def test_privileged_container_without_gpus_is_allowed() -> None:
    d, _ = run(pod(ctr("debug", securityContext={"privileged": True})))
    assert d.allowed


def test_unprivileged_security_context_is_fine() -> None:
    d, _ = run(pod(ctr("gpu", limits={GPU: 1}, securityContext={"privileged": False})))
    assert d.allowed


def test_node_name_already_set_is_denied() -> None:
    d, _ = run(pod(ctr(limits={GPU: 1}), nodeName="node-1"))
    assert not d.allowed and "spec.nodeName" in d.message and "node-1" in d.message


def test_node_name_without_gpus_is_fine() -> None:
    d, _ = run(pod(ctr("cpu"), nodeName="node-1"))
    assert d.allowed


# ------------------------------------------------------------------------------- enforcement off


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE", "anything"])
def test_disable_control_is_denied(value: str) -> None:
    c = ctr("main", limits={GPU: 1}, env=[{"name": "CUDA_DISABLE_CONTROL", "value": value}])
    d, _ = run(pod(c))
    assert not d.allowed
    assert (
        "container 'main'" in d.message
        and "CUDA_DISABLE_CONTROL" in d.message
        and "enforcement off" in d.message
    )


@pytest.mark.parametrize("value", ["", "false", "False", "0"])
def test_disable_control_false_is_allowed(value: str) -> None:
    c = ctr("main", limits={GPU: 1}, env=[{"name": "CUDA_DISABLE_CONTROL", "value": value}])
    d, _ = run(pod(c))
    assert d.allowed


def test_disable_control_without_value_is_allowed() -> None:
    d, _ = run(pod(ctr("main", limits={GPU: 1}, env=[{"name": "CUDA_DISABLE_CONTROL"}])))
    assert d.allowed


@pytest.mark.parametrize("value", ["disable", "DISABLE", " disable "])
def test_core_policy_disable_is_denied(value: str) -> None:
    c = ctr("main", limits={GPU: 1}, env=[{"name": "GPU_CORE_UTILIZATION_POLICY", "value": value}])
    d, _ = run(pod(c))
    assert not d.allowed and "GPU_CORE_UTILIZATION_POLICY" in d.message


def test_enforcement_env_from_value_from_is_denied() -> None:
    vf = {"configMapKeyRef": {"name": "cm", "key": "k"}}
    d, _ = run(pod(ctr("main", limits={GPU: 1}, env=[{"name": "CUDA_DISABLE_CONTROL", "valueFrom": vf}])))
    assert not d.allowed and "valueFrom" in d.message


def test_enforcement_off_in_init_container_is_denied() -> None:
    init = [ctr("setup", env=[{"name": "CUDA_DISABLE_CONTROL", "value": "true"}])]
    d, _ = run(pod(ctr(limits={GPU: 1}), init=init))
    assert not d.allowed and "container 'setup'" in d.message


def test_enforcement_off_allowed_in_opt_out_namespace() -> None:
    pol = policy("hami:\n  enforcementOptOutNamespaces: [research]\n  \nnvidia:\n  gpuCorePolicy: force\n")
    c = ctr(
        "main",
        limits={GPU: 1},
        env=[
            {"name": "CUDA_DISABLE_CONTROL", "value": "true"},
            {"name": "GPU_CORE_UTILIZATION_POLICY", "value": "disable"},
        ],
    )
    d, out = run(pod(c), pol, namespace="research")
    assert d.allowed
    assert (
        env(out["spec"]["containers"][0])["GPU_CORE_UTILIZATION_POLICY"] == "disable"
    )  # tenant's choice kept
    d2, _ = run(pod(c), pol, namespace="team-a")
    assert not d2.allowed


@pytest.mark.parametrize(
    "yaml_text", ["nvidia:\n  gpuCorePolicy: disable\n", "nvidia:\n  disableCoreLimit: true\n"]
)
def test_core_policy_disable_allowed_when_admin_already_disabled_it(yaml_text: str) -> None:
    c = ctr("main", limits={GPU: 1}, env=[{"name": "GPU_CORE_UTILIZATION_POLICY", "value": "disable"}])
    d, _ = run(pod(c), policy(yaml_text))
    assert d.allowed
    c2 = ctr("main", limits={GPU: 1}, env=[{"name": "CUDA_DISABLE_CONTROL", "value": "true"}])
    assert not run(pod(c2), policy(yaml_text))[0].allowed  # the shim itself stays mandatory


# The shim reads these from the container's environment, and the kubelet lets a container's own env
# override the device plugin's: a tenant setting them could lift the memory or compute limit.
LIMIT_VARS = [
    "CUDA_DEVICE_MEMORY_LIMIT",
    "CUDA_DEVICE_MEMORY_LIMIT_0",
    "CUDA_DEVICE_MEMORY_LIMIT_15",
    "CUDA_DEVICE_SM_LIMIT",
    "CUDA_DEVICE_SM_LIMIT_0",
    "CUDA_DEVICE_SM_LIMIT_3",
    "CUDA_DEVICE_MEMORY_SHARED_CACHE",
    "CUDA_OVERSUBSCRIBE",
    "LIBVGPU_REAL_LIBCUDA",
    "LIBVGPU_LIMITER_PERIOD_MS",
]


@pytest.mark.parametrize("name", LIMIT_VARS)
@pytest.mark.parametrize("value", ["100", "80g", ""])
def test_limit_variables_are_denied(name: str, value: str) -> None:
    c = ctr("main", limits={GPU: 1, MEM: 1000, CORES: 10}, env=[{"name": name, "value": value}])
    d, _ = run(pod(c))
    assert not d.allowed and d.code == 403
    assert "container 'main'" in d.message and f"env {name}:" in d.message
    assert "set by hami" in d.message


@pytest.mark.parametrize("name", ["CUDA_DEVICE_SM_LIMIT_1", "LIBVGPU_CONTEXT_OVERHEAD"])
def test_limit_variables_from_value_from_or_without_value_are_denied(name: str) -> None:
    vf = {"secretKeyRef": {"name": "s", "key": "k"}}
    d, _ = run(pod(ctr("main", limits={GPU: 1}, env=[{"name": name, "valueFrom": vf}])))
    assert not d.allowed and name in d.message
    d, _ = run(pod(ctr("main", limits={GPU: 1}, env=[{"name": name}])))
    assert not d.allowed and name in d.message


def test_limit_variables_are_denied_in_any_container() -> None:
    """Like CUDA_DISABLE_CONTROL: init containers and GPU-less containers too."""
    init = [ctr("setup", env=[{"name": "CUDA_DEVICE_SM_LIMIT", "value": "100"}])]
    side = ctr("side", env=[{"name": "LIBVGPU_REAL_LIBCUDA", "value": "/x.so"}])
    d, _ = run(pod(ctr(limits={GPU: 1}), side, init=init))
    assert not d.allowed
    assert "container 'setup'" in d.message and "container 'side'" in d.message
    d2, _ = run(pod(ctr("cpu", env=[{"name": "CUDA_DEVICE_MEMORY_LIMIT_0", "value": "80g"}])))
    assert not d2.allowed


@pytest.mark.parametrize(
    "name",
    [
        "LIBCUDA_LOG_LEVEL",
        "CUDA_DEVICE_SM_LIMITS",
        "CUDA_DEVICE_SM_LIMIT_X",
        "MY_CUDA_DEVICE_SM_LIMIT",
        "LIBVGPU",
    ],
)
def test_similar_names_are_not_limit_variables(name: str) -> None:
    d, _ = run(pod(ctr("main", limits={GPU: 1}, env=[{"name": name, "value": "1"}])))
    assert d.allowed, d.message


@pytest.mark.parametrize("value", ["all", "0", "GPU-1234", "", " none", "NONE"])
def test_visible_devices_on_gpu_container_is_denied(value: str) -> None:
    c = ctr("main", limits={GPU: 1}, env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": value}])
    d, _ = run(pod(c))
    assert not d.allowed and d.code == 403
    assert "container 'main'" in d.message and "env NVIDIA_VISIBLE_DEVICES:" in d.message


def test_visible_devices_on_gpu_init_container_or_from_value_from_is_denied() -> None:
    vf = {"configMapKeyRef": {"name": "cm", "key": "k"}}
    init = [ctr("warm", limits={MEM: 100}, env=[{"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": vf}])]
    d, _ = run(pod(ctr("cpu"), init=init))
    assert not d.allowed and "container 'warm'" in d.message and "NVIDIA_VISIBLE_DEVICES" in d.message


@pytest.mark.parametrize("value", ["none", "void"])
def test_visible_devices_none_or_void_on_gpu_container_is_allowed(value: str) -> None:
    c = ctr("main", limits={GPU: 1}, env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": value}])
    assert run(pod(c))[0].allowed


def test_visible_devices_on_gpu_less_container_is_not_denied() -> None:
    c = ctr("cpu", env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])
    assert run(pod(ctr("gpu", limits={GPU: 1}), c))[0].allowed
    assert run(pod(ctr("gpu", limits={GPU: 0}, env=c["env"])))[0].allowed  # zero GPUs: not managed


def test_limit_and_visible_devices_variables_allowed_in_opt_out_namespace() -> None:
    pol = policy("hami:\n  enforcementOptOutNamespaces: [research]\n")
    c = ctr(
        "main",
        limits={GPU: 1},
        env=[
            {"name": "CUDA_DEVICE_SM_LIMIT_0", "value": "100"},
            {"name": "LIBVGPU_LIMITER_PERIOD_MS", "value": "50"},
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
        ],
    )
    assert run(pod(c), pol, namespace="research")[0].allowed
    d, _ = run(pod(c), pol, namespace="team-a")
    assert not d.allowed
    assert all(
        n in d.message
        for n in ("CUDA_DEVICE_SM_LIMIT_0", "LIBVGPU_LIMITER_PERIOD_MS", "NVIDIA_VISIBLE_DEVICES")
    )


def test_env_from_is_not_inspected() -> None:
    """envFrom keys are invisible at admission (docs/webhook.md); the device plugin's per-device
    limits are what keep a whole CUDA_DEVICE_SM_LIMIT from a ConfigMap from taking effect."""
    c = ctr("main", limits={GPU: 1}, envFrom=[{"configMapRef": {"name": "cm"}}])
    assert run(pod(c))[0].allowed


def test_all_denials_are_reported_together() -> None:
    c = ctr("main", limits={GPU: 1}, env=[{"name": "CUDA_DISABLE_CONTROL", "value": "true"}])
    d, _ = run(pod(c, ctr("dbg", securityContext={"privileged": True}), nodeName="n1"))
    assert not d.allowed
    assert "CUDA_DISABLE_CONTROL" in d.message and "'dbg'" in d.message and "spec.nodeName" in d.message


def test_decision_is_deterministic() -> None:
    p = pod(ctr("a", limits={MEM: "10"}), ctr("b", limits={GPU: 2, PRIO: 1}), init=[ctr("i")])
    pol = policy("nvidia:\n  overwriteEnv: true\n  gpuCorePolicy: force\n  runtimeClassName: nvidia\n")
    assert run(p, pol)[0] == run(p, pol)[0]


# ------------------------------------------------------------------------------------- properties

_quantity = st.one_of(st.integers(0, 100), st.integers(0, 100).map(str))
_resources = st.one_of(
    st.none(),
    st.just({}),
    st.fixed_dictionaries(
        {},
        optional={
            "limits": st.one_of(
                st.none(),
                st.dictionaries(st.sampled_from([GPU, MEM, PCT, CORES, PRIO, "cpu"]), _quantity, max_size=5),
            ),
            "requests": st.dictionaries(st.sampled_from(["cpu", "memory"]), st.just("1"), max_size=2),
        },
    ),
)
_env = st.one_of(
    st.none(),
    st.lists(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(
                    ["A", "NVIDIA_VISIBLE_DEVICES", "CUDA_TASK_PRIORITY", "GPU_CORE_UTILIZATION_POLICY"]
                )
            },
            optional={"value": st.sampled_from(["", "all", "0", "force", "default"])},
        ),
        max_size=4,
    ),
)


@st.composite
def _containers(draw: st.DrawFn, prefix: str) -> list[dict[str, Any]]:
    n = draw(st.integers(0, 3))
    out = []
    for i in range(n):
        c: dict[str, Any] = {"name": f"{prefix}{i}", "image": "x"}
        res = draw(_resources)
        if res is not None or draw(st.booleans()):
            c["resources"] = res
        e = draw(_env)
        if e is not None or draw(st.booleans()):
            c["env"] = e
        out.append(c)
    return out


_policies = [
    policy(),
    policy("nvidia:\n  overwriteEnv: true\n  gpuCorePolicy: force\n  runtimeClassName: nvidia\n"),
    policy("nvidia:\n  defaultMemory: 1000\n  defaultGPUNum: 2\n  gpuCorePolicy: disable\n"),
]


@settings(max_examples=300, deadline=None)
@given(
    app=_containers("c").filter(bool),
    init=_containers("i"),
    pol=st.sampled_from(_policies),
    scheduler=st.sampled_from([None, "default-scheduler", "hami-scheduler"]),
)
def test_patch_always_applies_and_webhook_is_idempotent(
    app: list[dict[str, Any]], init: list[dict[str, Any]], pol: WebhookPolicy, scheduler: str | None
) -> None:
    p = pod(*app, init=init or None)
    if scheduler is None:
        del p["spec"]["schedulerName"]
    else:
        p["spec"]["schedulerName"] = scheduler
    d, out = run(p, pol)
    if not d.allowed:
        # The one denial generated pods can earn: NVIDIA_VISIBLE_DEVICES (other than none/void) on a
        # container that gets GPUs. Drop it from the containers named and go on with the rest.
        reasons = d.message.split("; ")
        assert all("env NVIDIA_VISIBLE_DEVICES:" in r for r in reasons), d.message
        for c in [*p["spec"]["containers"], *p["spec"].get("initContainers", [])]:
            if f"container {c['name']!r}:" in d.message:
                c["env"] = [e for e in c["env"] if e["name"] != "NVIDIA_VISIBLE_DEVICES"]
        d, out = run(p, pol)
    assert d.allowed, d.message
    paths = [op["path"] for op in d.patch if not op["path"].endswith("/-")]
    assert len(paths) == len(set(paths)), paths  # no location written twice
    again, out2 = run(out, pol)
    assert again.allowed and not again.patch, again.patch  # reinvocation changes nothing
    assert out2 == out
    if d.managed:
        assert out["spec"]["schedulerName"] == pol.scheduler_name
