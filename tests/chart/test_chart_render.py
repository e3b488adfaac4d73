"""charts/hami rendered by helm: lint, what each value set produces, and that the generated
configuration files are exactly what hami's own code reads and generates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from chart_values import CHART, VALUE_SETS, Rendered, ValueSet

from hami.config.device import DeviceConfig, parse_device_config
from hami.config.node import parse_node_config_file
from hami.devices.registry import default_registry
from hami.extender.schedulerconfig import scheduler_configuration
from hami.testing.dra import device_class, mig_device_class
from hami.testing.helm import Helm, HelmError
from hami.webhook.claimrefs import MATCH_CONDITION

pytestmark = pytest.mark.integration

Render = Callable[[str], Rendered]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(helm: Helm, name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name].values)
    assert "0 chart(s) failed" in report


def _device_config(r: Rendered) -> tuple[DeviceConfig, list[str]]:
    cm = r.get("ConfigMap", f"{r.values.fullname}-device-config")
    return parse_device_config(cm["data"]["device-config.yaml"], source="chart")


def test_default_device_config_is_hamis_default(rendered: Render) -> None:
    cfg, warnings = _device_config(rendered("default"))
    assert warnings == []
    assert cfg.model_dump() == DeviceConfig.default().model_dump()


def test_values_reach_the_device_config(rendered: Render) -> None:
    cfg, warnings = _device_config(rendered("full"))
    assert warnings == []
    nv = cfg.nvidia
    assert nv.resource_names() == {
        "resourceCountName": "example.com/vgpu",
        "resourceMemoryName": "example.com/vgpu-mem",
        "resourceMemoryPercentageName": "example.com/vgpu-mem-pct",
        "resourceCoreName": "example.com/vgpu-cores",
        "resourcePriorityName": "example.com/vgpu-priority",
    }
    assert (nv.device_split_count, nv.device_memory_scaling, nv.mig_strategy) == (4, 1.5, "mixed")
    assert (nv.disable_core_limit, nv.gpu_core_policy, nv.lib_cuda_log_level) == (True, "force", 3)
    assert nv.runtime_class_name == "nvidia-hami"
    sched = cfg.hami.scheduler
    assert (sched.node_scheduler_policy, sched.gpu_scheduler_policy) == ("spread", "topology-aware")
    assert sched.node_lock_timeout_seconds == 300  # nodeLockExpire: 5m
    assert cfg.hami.scheduler_name == "gpu-sched"
    assert cfg.hami.enforcement_opt_out_namespaces == ["research"]


def test_device_config_content_replaces_the_file(rendered: Render) -> None:
    cm = rendered("minimal").get("ConfigMap", "bare-hami-device-config")
    assert cm["data"]["device-config.yaml"].strip() == "nvidia:\n  deviceSplitCount: 7"


def test_node_config_json_is_valid(rendered: Render) -> None:
    default = rendered("default").get("ConfigMap", "hami-node-config")["data"]["config.json"]
    assert parse_node_config_file(default).nodeconfig == []
    full = rendered("full").get("ConfigMap", "gpu-hami-node-config")["data"]["config.json"]
    (entry,) = parse_node_config_file(full).nodeconfig
    assert (entry.name, entry.devicesplitcount) == ("n1", 2)


@pytest.mark.parametrize("name", ["default", "full", "certmanager"])
def test_kube_scheduler_config_equals_hamis_generator(rendered: Render, name: str) -> None:
    """The chart's KubeSchedulerConfiguration is what hami.extender.schedulerconfig generates for the
    same values."""
    r = rendered(name)
    cfg, _ = _device_config(r)
    shipped = yaml.safe_load(r.get("ConfigMap", f"{r.values.fullname}-scheduler")["data"]["config.yaml"])
    values: dict[str, Any] = r.values.values
    sched_values = values.get("scheduler", {})
    leader = sched_values.get("leaderElect", True)
    expected = scheduler_configuration(
        extender_url="http://127.0.0.1:8080",
        registry=default_registry(cfg),
        scheduler_name=values.get("schedulerName", "hami-scheduler"),
        leader_elect=leader,
        lease_namespace=r.values.namespace,
        http_timeout=f"{sched_values.get('extenderHTTPTimeout', 30)}s",
        preempt=sched_values.get("preemption", {}).get("enabled", True),
        dra=values.get("dra", {}).get("enabled", False),
    )
    assert shipped == expected


def test_preemption_is_on_by_default_and_can_be_switched_off(helm: Helm) -> None:
    """``scheduler.preemption.enabled`` (default true) registers hami's preempt verb with
    kube-scheduler and leaves the extender's device-only preemption on; false removes both."""
    for enabled in (None, True, False):
        values: dict[str, Any] = (
            {} if enabled is None else {"scheduler": {"preemption": {"enabled": enabled}}}
        )
        docs = helm.render(CHART, release="hami", namespace="hami-system", values=values)
        r = Rendered(ValueSet("p", "hami-system", "hami", values), docs)
        cfg = yaml.safe_load(r.get("ConfigMap", "hami-scheduler")["data"]["config.yaml"])
        args = r.container("Deployment", "hami-scheduler", "vgpu-scheduler-extender")["args"]
        if enabled is False:
            assert "preemptVerb" not in cfg["extenders"][0]
            assert "--no-preemption" in args
        else:
            assert cfg["extenders"][0]["preemptVerb"] == "preempt"
            assert "--no-preemption" not in args


def test_dra_mode(rendered: Render) -> None:
    """dra.enabled: the DeviceClass the claims name, the extender and webhook in DRA mode, the
    scheduler's gate, and read access to slices and claims (create only for templates)."""
    assert not rendered("default").of_kind("DeviceClass")
    r = rendered("full")
    classes = r.of_kind("DeviceClass")
    assert [(c["apiVersion"], c["metadata"]["name"], c["spec"]) for c in classes] == [
        (want["apiVersion"], want["metadata"]["name"], want["spec"])
        for want in (device_class(), mig_device_class())
    ]
    # pods with ResourceClaims reach the webhook (native claims on hami's classes are steered)
    (hook,) = r.of_kind("MutatingWebhookConfiguration")[0]["webhooks"]
    assert hook["matchConditions"][0]["expression"].endswith(f" || {MATCH_CONDITION}")
    assert (
        MATCH_CONDITION
        not in rendered("default").of_kind("MutatingWebhookConfiguration")[0]["webhooks"][0][
            "matchConditions"
        ][0]["expression"]
    )
    name = f"{r.values.fullname}-scheduler"
    assert "--dra" in r.container("Deployment", name, "vgpu-scheduler-extender")["args"]
    assert "--dra=all" in r.container("Deployment", name, "webhook")["args"]
    assert (
        "--feature-gates=DRAConsumableCapacity=true,DRAPartitionableDevices=true"
        in r.container("Deployment", name, "kube-scheduler")["command"]
    )
    rules = r.get("ClusterRole", name)["rules"]
    dra_rules = [rule for rule in rules if rule["apiGroups"] == ["resource.k8s.io"]]
    assert dra_rules == [
        {
            "apiGroups": ["resource.k8s.io"],
            "resources": ["resourceslices", "resourceclaims"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["resource.k8s.io"],
            "resources": ["resourceclaimtemplates"],
            "verbs": ["get", "create"],
        },
    ]


def test_scheduler_pod(rendered: Render) -> None:
    r = rendered("default")
    dep = r.get("Deployment", "hami-scheduler")
    pod = dep["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["kube-scheduler", "vgpu-scheduler-extender", "webhook"]
    assert pod["serviceAccountName"] == "hami-scheduler"
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    ks = r.container("Deployment", "hami-scheduler", "kube-scheduler")
    assert ks["image"] == "hami.local/kube-scheduler:v1.34.4"
    assert ks["command"][:2] == ["/usr/local/bin/kube-scheduler", "--config=/config/config.yaml"]
    ext = r.container("Deployment", "hami-scheduler", "vgpu-scheduler-extender")
    assert ext["image"] == "hami.local/hami:0.1.0" and ext["imagePullPolicy"] == "IfNotPresent"
    assert ext["args"] == [
        "scheduler",
        "--bind=127.0.0.1:8080",
        "--metrics-bind=0.0.0.0:9395",
        "--device-config=/device-config/device-config.yaml",
        "--follow-scheduler-lease",
        "--lease-namespace=hami-system",
        "--lease-name=hami-scheduler",
    ]
    wh = r.container("Deployment", "hami-scheduler", "webhook")
    assert wh["args"] == [
        "webhook",
        "--bind=0.0.0.0:9443",
        "--device-config=/device-config/device-config.yaml",
        "--force-overwrite-default-scheduler",
        "--self-signed-hosts=hami-scheduler.hami-system.svc,hami-scheduler.hami-system.svc.cluster.local",
        "--webhook-config-name=hami-webhook",
        "--ca-secret=hami-system/hami-webhook-ca",
    ]
    svc = r.get("Service", "hami-scheduler")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "http": (443, "webhook"),
        "monitor": (9395, "metrics"),
    }
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    mwc = r.get("MutatingWebhookConfiguration", "hami-webhook")
    assert mwc["webhooks"][0]["clientConfig"]["service"] == {
        "name": "hami-scheduler",
        "namespace": "hami-system",
        "path": "/webhook",
        "port": 443,
    }
    assert not r.has("PodDisruptionBudget", "hami-scheduler")  # one replica: a PDB would block drains


def test_full_values_reach_the_scheduler_pod(rendered: Render) -> None:
    r = rendered("full")
    dep = r.get("Deployment", "gpu-hami-scheduler")
    assert dep["spec"]["replicas"] == 3
    assert r.get("PodDisruptionBudget", "gpu-hami-scheduler")["spec"]["minAvailable"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "pull"}]
    ext = r.container("Deployment", "gpu-hami-scheduler", "vgpu-scheduler-extender")
    assert ext["image"] == "registry.example/hami:v9"
    assert "--metrics-bind=0.0.0.0:9500" in ext["args"] and ext["args"][-1] == "--bind-queue-limit=4"
    assert "--lease-name=gpu-sched" in ext["args"]
    wh = r.container("Deployment", "gpu-hami-scheduler", "webhook")
    assert "--no-force-overwrite-default-scheduler" in wh["args"]
    svc = r.get("Service", "gpu-hami-scheduler")
    assert svc["spec"]["type"] == "NodePort"
    assert {p["name"]: p["nodePort"] for p in svc["spec"]["ports"]} == {"http": 31998, "monitor": 31993}
    hook = r.get("MutatingWebhookConfiguration", "gpu-hami-webhook")["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["namespaceSelector"]["matchLabels"] == {"gpu-tenant": "yes"}
    assert {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["batch"],
    } in hook["namespaceSelector"]["matchExpressions"]
    (cond,) = hook["matchConditions"]
    assert "k.startsWith('example.com/')" in cond["expression"]
    assert "nvidia.com" not in cond["expression"]
    monitors = {m["metadata"]["name"]: m for m in r.of_kind("ServiceMonitor")}
    assert sorted(monitors) == ["gpu-hami-monitor", "gpu-hami-scheduler"]
    assert monitors["gpu-hami-scheduler"]["metadata"]["labels"]["release"] == "kube-prometheus"
    assert r.get("RuntimeClass", "nvidia-hami")["handler"] == "nvidia"


def test_dashboard_configmap_is_the_dashboard_file(rendered: Render) -> None:
    cm = rendered("full").get("ConfigMap", "gpu-hami-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "GPU"
    assert cm["data"]["hami.json"] == (CHART / "dashboards" / "hami.json").read_text().rstrip("\n")
    assert not rendered("default").has("ConfigMap", "hami-dashboard")


def test_overwrite_env_sends_every_pod_to_the_webhook(helm: Helm) -> None:
    objs = helm.render(CHART, release="hami", namespace="x", values={"scheduler": {"overwriteEnv": "true"}})
    (mwc,) = [o for o in objs if o["kind"] == "MutatingWebhookConfiguration"]
    assert "matchConditions" not in mwc["webhooks"][0]


def test_device_plugin_daemonset(rendered: Render) -> None:
    r = rendered("default")
    ds = r.get("DaemonSet", "hami-device-plugin")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "on"}
    assert pod["serviceAccountName"] == "hami-device-plugin"
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {
        "device-plugins": "/var/lib/kubelet/device-plugins",
        "vgpu": "/usr/local/vgpu",
        "vgpulock": "/tmp/vgpulock",
    }
    installer = r.container("DaemonSet", "hami-device-plugin", "install-host")
    assert installer["args"] == ["install-host", "--hook-path", "/usr/local"]
    assert installer["volumeMounts"] == [{"name": "vgpu", "mountPath": "/usr/local/vgpu"}]
    plugin = r.container("DaemonSet", "hami-device-plugin", "device-plugin")
    # the plugin mounts <hook>/vgpu/libvgpu.so into containers from the same host path the
    # installer wrote, and creates the per-container directories there
    mounts = {m["name"]: m["mountPath"] for m in plugin["volumeMounts"]}
    assert mounts["vgpu"] == "/usr/local/vgpu" and mounts["vgpulock"] == "/tmp/vgpulock"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in plugin["env"]}
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["HOOK_PATH"] == "/usr/local"
    assert plugin["securityContext"]["runAsUser"] == 0
    assert plugin["args"] == [
        "device-plugin",
        "--device-config-file=/device-config/device-config.yaml",
        "--node-config-file=/node-config/config.json",
        "--plugin-dir=/var/lib/kubelet/device-plugins/",
    ]


def test_full_values_reach_the_device_plugin(rendered: Render) -> None:
    r = rendered("full")
    pod = r.get("DaemonSet", "gpu-hami-device-plugin")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia-hami"
    plugin = r.container("DaemonSet", "gpu-hami-device-plugin", "device-plugin")
    assert "--fake-node=/fake-node/fake-node.yaml" in plugin["args"]
    env = {e["name"]: e.get("value") for e in plugin["env"]}
    assert env["ENABLE_TOPOLOGY_SCORE"] == "true" and env["LOG_LEVEL"] == "debug"
    assert r.get("ConfigMap", "gpu-hami-fake-node")["data"]["fake-node.yaml"] == "cards: []\n"
    # NVML from a host directory: the library by path, the directory mounted read-only where it is
    monitor = r.container("DaemonSet", "gpu-hami-monitor", "monitor")
    assert monitor["command"] == ["python3", "-m", "hami.monitor"]
    assert monitor["args"] == [
        "--metrics-bind=0.0.0.0:9394",
        "--nvml-library=/opt/driver/lib/libnvidia-ml.so.1",
    ]
    env = {e["name"]: e.get("value") for e in monitor["env"]}
    assert env["DRIVER_NODE"] == "$(NODE_NAME)"
    assert [e["name"] for e in monitor["env"]].index("NODE_NAME") < [e["name"] for e in monitor["env"]].index(
        "DRIVER_NODE"
    )  # Kubernetes expands $(NODE_NAME) only from variables defined before
    assert {"name": "nvml", "mountPath": "/opt/driver/lib", "readOnly": True} in monitor["volumeMounts"]
    volumes = r.get("DaemonSet", "gpu-hami-monitor")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "nvml", "hostPath": {"path": "/opt/driver/lib", "type": "Directory"}} in volumes


def test_the_monitor_ships_by_default(rendered: Render) -> None:
    """As HAMi's vgpu-monitor beside its device plugin: the monitor DaemonSet, its Service and RBAC
    are in the default install, on the device plugin's nodes; NVML comes from the NVIDIA runtime
    (no host directory mounted). Only switching it off removes it."""
    r = rendered("default")
    ds = r.get("DaemonSet", "hami-monitor")
    pod = ds["spec"]["template"]["spec"]
    plugin = r.get("DaemonSet", "hami-device-plugin")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == plugin["nodeSelector"]
    monitor = r.container("DaemonSet", "hami-monitor", "monitor")
    assert monitor["args"] == ["--metrics-bind=0.0.0.0:9394"]
    env = {e["name"]: e.get("value") for e in monitor["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["HOOK_PATH"] == "/usr/local"
    assert [v["name"] for v in pod["volumes"]] == ["containers"]
    assert r.has("Service", "hami-monitor") and r.has("ClusterRole", "hami-monitor")
    assert not any(o["metadata"]["name"] == "bare-hami-monitor" for o in rendered("minimal").objects)


def test_cert_manager_variant(rendered: Render) -> None:
    r = rendered("certmanager")
    wh = r.container("Deployment", "hami-cm-scheduler", "webhook")
    assert "--cert-file=/tls/tls.crt" in wh["args"] and "--key-file=/tls/tls.key" in wh["args"]
    assert not any(a.startswith(("--self-signed-hosts", "--ca-secret")) for a in wh["args"])
    cert = r.get("Certificate", "hami-cm-webhook")["spec"]
    assert cert["secretName"] == "hami-cm-webhook-tls"
    assert cert["dnsNames"][0] == "hami-cm-scheduler.chart-certmanager.svc"
    mwc = r.get("MutatingWebhookConfiguration", "hami-cm-webhook")
    assert (
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        == "chart-certmanager/hami-cm-webhook"
    )
    ext = r.container("Deployment", "hami-cm-scheduler", "vgpu-scheduler-extender")
    assert not any("lease" in a for a in ext["args"])  # leaderElect: false


def test_minimal_variant(rendered: Render) -> None:
    r = rendered("minimal")
    kinds = {k for k, _ in r.kinds()}
    assert not kinds & {"DaemonSet", "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy"}
    pod = r.get("Deployment", "bare-hami-scheduler")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["kube-scheduler", "vgpu-scheduler-extender"]


@pytest.mark.parametrize(("value", "seconds"), [("90s", 90), ("5m", 300), ("1h", 3600)])
def test_node_lock_expire_durations(helm: Helm, value: str, seconds: int) -> None:
    objs = helm.render(CHART, release="hami", namespace="x", values={"scheduler": {"nodeLockExpire": value}})
    (cm,) = [o for o in objs if o["metadata"]["name"] == "hami-device-config"]
    cfg, _ = parse_device_config(cm["data"]["device-config.yaml"])
    assert cfg.hami.scheduler.node_lock_timeout_seconds == seconds


def test_bad_node_lock_expire_is_refused(helm: Helm) -> None:
    with pytest.raises(HelmError, match=r"scheduler.nodeLockExpire \\?\"5 minutes\\?\""):
        helm.render(
            CHART, release="hami", namespace="x", values={"scheduler": {"nodeLockExpire": "5 minutes"}}
        )


def test_admission_policy_trusts_this_releases_service_accounts(rendered: Render) -> None:
    r = rendered("full")
    policy = r.get("ValidatingAdmissionPolicy", "gpu-hami-protect-annotations")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["allowedUsers"] == (
        "['system:serviceaccount:chart-full:gpu-hami-scheduler', "
        "'system:serviceaccount:chart-full:gpu-hami-device-plugin']"
    )
    assert variables["deviceResourcePrefixes"] == "['example.com/']"
    binding = r.get("ValidatingAdmissionPolicyBinding", "gpu-hami-protect-annotations")
    assert binding["spec"] == {"policyName": "gpu-hami-protect-annotations", "validationActions": ["Deny"]}


def test_every_object_is_labelled_and_in_the_release_namespace(rendered: Render) -> None:
    for name in VALUE_SETS:
        r = rendered(name)
        for obj in r.objects:
            meta = obj["metadata"]
            assert meta["labels"]["app.kubernetes.io/instance"] == r.values.release, meta["name"]
            assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm", meta["name"]
            if meta["name"].endswith("-auth-reader"):  # kube-scheduler's authentication ConfigMap reader
                assert (obj["kind"], meta["namespace"]) == ("RoleBinding", "kube-system")
            elif "namespace" in meta:
                assert meta["namespace"] == r.values.namespace, (obj["kind"], meta["name"])


def test_schema_refuses_bad_values(helm: Helm) -> None:
    bad = {"scheduler": {"defaultSchedulerPolicy": {"gpuSchedulerPolicy": "packed"}}}
    with pytest.raises(HelmError, match="gpuSchedulerPolicy"):
        helm.render(CHART, release="hami", namespace="x", values=bad)
    with pytest.raises(HelmError, match="deviceSplitCount"):
        helm.render(CHART, release="hami", namespace="x", values={"devicePlugin": {"deviceSplitCount": 0}})


def test_kubernetes_older_than_1_30_is_refused(helm: Helm) -> None:
    old = Helm(helm.binary, kube_version="1.29.9")
    with pytest.raises(HelmError, match="kubeVersion"):
        old.render(CHART, release="hami", namespace="x")


# A values file written for HAMi's chart: its shapes (string booleans, null lists, its own
# --config line, keys hami does not have) must render, with the shared knobs honoured.
HAMI_STYLE_VALUES: dict[str, Any] = {
    "global": {"gpuHookPath": "/opt/hami-hook"},
    "resourceMem": "nvidia.com/gpumem",
    "scheduler": {
        "overwriteEnv": "false",
        "defaultSchedulerPolicy": {"nodeSchedulerPolicy": "spread", "gpuSchedulerPolicy": "binpack"},
        "kubeScheduler": {"enabled": True, "extraNewArgs": ["--config=/config/config.yaml", "-v=4"]},
        "admissionWebhook": {"whitelistNamespaces": None, "namespaceSelector": {"matchLabels": None}},
        "patch": {"enabled": True, "image": {"repository": "jettech/kube-webhook-certgen"}},
        "nodeLabelSelector": {"gpu": "on"},
    },
    "devicePlugin": {
        "deviceSplitCount": 20,
        "disablecorelimit": "true",
        "libPath": "/usr/local/vgpu",
        "deviceListStrategy": "envvar",
        "monitor": {"ctrPath": "/usr/local/vgpu/containers"},
    },
    "mluResourceName": "cambricon.com/vmlu",
    "podSecurityPolicy": {"enabled": False},
}


def test_a_hami_values_file_carries_over(helm: Helm) -> None:
    helm.lint(CHART, HAMI_STYLE_VALUES)
    r = Rendered(
        VALUE_SETS["default"],
        helm.render(CHART, release="hami", namespace="hami-system", values=HAMI_STYLE_VALUES),
    )
    cfg, warnings = _device_config(r)
    assert warnings == []
    assert (cfg.nvidia.device_split_count, cfg.nvidia.disable_core_limit) == (20, True)
    assert cfg.hami.scheduler.node_scheduler_policy == "spread"
    ks = r.container("Deployment", "hami-scheduler", "kube-scheduler")
    assert ks["command"] == ["/usr/local/bin/kube-scheduler", "--config=/config/config.yaml", "-v=4"]
    installer = r.container("DaemonSet", "hami-device-plugin", "install-host")
    assert installer["args"] == ["install-host", "--hook-path", "/opt/hami-hook"]
    assert installer["volumeMounts"] == [{"name": "vgpu", "mountPath": "/opt/hami-hook/vgpu"}]
    hook = r.get("MutatingWebhookConfiguration", "hami-webhook")["webhooks"][0]
    assert "matchLabels" not in hook["namespaceSelector"]


def _parse_chart_command(
    r: Rendered,
    daemonset: str,
    container: str,
    command: click.Command,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> click.Context:
    """A DaemonSet container's arguments and environment, parsed by the real command (the
    ConfigMap mounts replaced by files here, spec.nodeName by "n1")."""
    name = r.values.fullname
    files = {
        "/device-config/device-config.yaml": r.get("ConfigMap", f"{name}-device-config")["data"][
            "device-config.yaml"
        ],
        "/node-config/config.json": r.get("ConfigMap", f"{name}-node-config")["data"]["config.json"],
        "/fake-node/fake-node.yaml": r.get("ConfigMap", f"{name}-fake-node")["data"]["fake-node.yaml"],
    }
    spec = r.container("DaemonSet", daemonset, container)
    assert spec["args"][0] == command.name
    args = spec["args"][1:]
    for mounted, content in files.items():
        local = tmp_path / Path(mounted).name
        local.write_text(content)
        args = [a.replace(mounted, str(local)) for a in args]
    for env in spec["env"]:
        monkeypatch.setenv(env["name"], env.get("value", "n1"))  # fieldRef spec.nodeName -> "n1"
    return command.make_context(str(command.name), args)


def test_device_plugin_command_line_parses(
    rendered: Render, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's device plugin arguments and environment, parsed by the real `hami device-plugin`."""
    from hami.deviceplugin.cli import device_plugin

    ctx = _parse_chart_command(
        rendered("full"), "gpu-hami-device-plugin", "device-plugin", device_plugin, tmp_path, monkeypatch
    )
    assert ctx.params["node_name"] == "n1"
    assert ctx.params["hook_path"] == "/usr/local"
    assert ctx.params["plugin_dir"] == "/var/lib/kubelet/device-plugins/"
    assert ctx.params["fake_node"] == str(tmp_path / "fake-node.yaml")


def test_dra_plugin_command_line_parses(
    rendered: Render, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's DRA plugin arguments and environment, parsed by the real `hami dra-plugin`."""
    from hami.draplugin.cli import dra_plugin

    ctx = _parse_chart_command(
        rendered("full"), "gpu-hami-dra-plugin", "dra-plugin", dra_plugin, tmp_path, monkeypatch
    )
    assert ctx.params["node_name"] == "n1"
    assert ctx.params["hook_path"] == "/usr/local"
    assert ctx.params["plugin_dir"] == "/var/lib/kubelet/plugins/hami-core-gpu.project-hami.io"
    assert ctx.params["registry_dir"] == "/var/lib/kubelet/plugins_registry"
    assert ctx.params["cdi_dir"] == "/run/cdi"
    assert ctx.params["fake_node"] == str(tmp_path / "fake-node.yaml")
    assert ctx.params["log_level"] == "DEBUG"


def test_dra_plugin_objects(rendered: Render) -> None:
    """The DRA plugin only where enabled; its DaemonSet shares the device plugin's host paths for
    the library; least-privilege RBAC; the DeviceClass the plugin's slices match."""
    from hami.draplugin.slices import device_class, mig_device_class

    assert not any("dra-plugin" in name for _, name in rendered("default").kinds())
    r = rendered("full")
    pod = r.get("DaemonSet", "gpu-hami-dra-plugin")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "gpu-hami-dra-plugin"
    assert pod["nodeSelector"] == {"gpu": "on"} and pod["runtimeClassName"] == "nvidia-hami"
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {
        "plugins": "/var/lib/kubelet/plugins/hami-core-gpu.project-hami.io",
        "plugins-registry": "/var/lib/kubelet/plugins_registry",
        "cdi": "/run/cdi",
        "vgpu": "/usr/local/vgpu",
        "vgpulock": "/tmp/vgpulock",
    }
    assert [c["name"] for c in pod["initContainers"]] == ["install-host"]
    role = r.get("ClusterRole", "gpu-hami-dra-plugin")
    assert role["rules"] == [
        {
            "apiGroups": ["resource.k8s.io"],
            "resources": ["resourceslices"],
            "verbs": ["get", "create", "update"],
        },
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
    ]
    for want in (device_class(), mig_device_class()):
        dc = r.get("DeviceClass", want["metadata"]["name"])
        assert (dc["apiVersion"], dc["spec"]) == (want["apiVersion"], want["spec"])


def _skipped_by_name(r: Rendered, name: str) -> list[str] | None:
    hook = r.get("MutatingWebhookConfiguration", name)["webhooks"][0]
    for e in hook["namespaceSelector"]["matchExpressions"]:
        if e["key"] == "kubernetes.io/metadata.name":
            assert e["operator"] == "NotIn"
            return list(e["values"])
    return None


def test_webhook_skips_no_namespace_by_name_unless_every_pod_is_sent(rendered: Render) -> None:
    """HAMi skips no namespace: with matchConditions only GPU pods come, so kube-system's GPU pods
    are hami's too; with overwriteEnv every pod comes, and hami's own namespace and kube-system stay
    out so that an outage cannot stop hami or the control plane."""
    assert _skipped_by_name(rendered("default"), "hami-webhook") is None
    assert rendered("default").get("MutatingWebhookConfiguration", "hami-webhook")["webhooks"][0][
        "matchConditions"
    ]
    certmanager = rendered("certmanager")
    assert _skipped_by_name(certmanager, "hami-cm-webhook") == ["chart-certmanager", "kube-system"]
    assert (
        "matchConditions"
        not in certmanager.get("MutatingWebhookConfiguration", "hami-cm-webhook")["webhooks"][0]
    )


MIXED_CONTENT = """\
nvidia:
  deviceSplitCount: 10
hygon:
  memoryFactor: 1024
iluvatars:
  - chipName: BI-V100
  - chipName: MR-V100
    resourceCountName: iluvatar.ai/mr-gpu
amd: {}
awsneuron: {}
mthreads:
  resourceCoreName: mthreads.com/cores
cambricon: {}
kunlun:
  resourceVMemoryName: kunlunxin.com/vmem
metax: {}
vnpus: {}
"""


def test_configured_vendors_are_managed_and_sent_to_the_webhook(helm: Helm) -> None:
    """Issue 13: the kube-scheduler's managedResources and the webhook's matchConditions come from
    the configured backends (the registry built from device-config.content), not from NVIDIA alone;
    ``vnpus: {}`` adds hami's default Ascend chips; Metax adds its whole-GPU and its sGPU names."""
    objs = helm.render(
        CHART, release="hami", namespace="x", values={"device-config": {"content": MIXED_CONTENT}}
    )
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "hami-scheduler"]
    shipped = yaml.safe_load(cm["data"]["config.yaml"])
    cfg, _ = parse_device_config(MIXED_CONTENT)
    names = [r["name"] for r in shipped["extenders"][0]["managedResources"]]
    assert names == default_registry(cfg).resource_names()
    assert "iluvatar.ai/mr-gpu" in names and "amd.com/gpucores" in names
    assert "cambricon.com/vmlu" in names and "kunlunxin.com/vmem" in names
    metax = ["metax-tech.com/gpu", "metax-tech.com/sgpu", "metax-tech.com/vmemory", "metax-tech.com/vcore"]
    assert [n for n in names if n.startswith("metax-tech.com/")] == metax
    assert names[-21:-18] == [
        "huawei.com/Ascend910A",
        "huawei.com/Ascend910A-memory",
        "huawei.com/Ascend910A-core",
    ]
    assert names[-3:] == [
        "huawei.com/Ascend910C",
        "huawei.com/Ascend910C-memory",
        "huawei.com/Ascend910C-core",
    ]
    (mwc,) = [o for o in objs if o["kind"] == "MutatingWebhookConfiguration"]
    (cond,) = mwc["webhooks"][0]["matchConditions"]
    assert "mthreads.com/cores" in names and "aws.amazon.com/neuroncore" in names
    for domain in ("nvidia.com/", "hygon.com/", "iluvatar.ai/", "amd.com/", "aws.amazon.com/", "huawei.com/"):
        assert f"k.startsWith('{domain}')" in cond["expression"]


@pytest.mark.parametrize(
    ("content", "drs"),
    [
        ("enflame: {}\n", "enflame.com/drs-gcu"),
        ("enflame:\n  resourceNameVGCU: enflame.com/vgcu\n", "enflame.com/vgcu"),
    ],
)
def test_enflame_drs_names_are_managed_as_hami_resolves_them(helm: Helm, content: str, drs: str) -> None:
    """Enflame's DRS count name is resourceNameDRSGCU, else the legacy resourceNameVGCU the file
    sets (HAMi's chart sets it): the same names as the extender's registry."""
    objs = helm.render(CHART, release="hami", namespace="x", values={"device-config": {"content": content}})
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "hami-scheduler"]
    names = [r["name"] for r in yaml.safe_load(cm["data"]["config.yaml"])["extenders"][0]["managedResources"]]
    cfg, _ = parse_device_config(content)
    assert names == default_registry(cfg).resource_names()
    assert drs in names and "enflame.com/gcu-memory" in names


def test_webui_is_off_by_default(rendered: Render) -> None:
    r = rendered("default")
    assert not any(o["metadata"]["name"].endswith("-webui") for o in r.objects)


def test_webui_is_read_only_and_inside_the_cluster(rendered: Render) -> None:
    r = rendered("full")
    (rule,) = r.get("ClusterRole", "gpu-hami-webui")["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["nodes", "pods", "resourcequotas"],
        "verbs": ["get", "list", "watch"],
    }
    binding = r.get("ClusterRoleBinding", "gpu-hami-webui")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gpu-hami-webui", "namespace": "chart-full"}
    ]
    dep = r.get("Deployment", "gpu-hami-webui")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "gpu-hami-webui"
    assert pod["securityContext"]["runAsNonRoot"] is True
    ui = r.container("Deployment", "gpu-hami-webui", "webui")
    assert ui["image"] == "registry.example/hami:v9"
    assert ui["securityContext"]["readOnlyRootFilesystem"] is True
    assert ui["args"] == [
        "webui",
        "--bind=0.0.0.0:8090",
        "--device-config=/device-config/device-config.yaml",
        "--monitor-selector=app.kubernetes.io/name=hami,app.kubernetes.io/instance=gpu,app.kubernetes.io/component=monitor",
        "--monitor-port=9394",
        "--usage-interval=2",
    ]
    # the selector names the monitor DaemonSet's pods
    monitor = r.get("DaemonSet", "gpu-hami-monitor")["spec"]["selector"]["matchLabels"]
    assert ui["args"][3] == "--monitor-selector=" + ",".join(f"{k}={v}" for k, v in monitor.items())
    svc = r.get("Service", "gpu-hami-webui")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8090, "http")]


def test_webui_reads_prometheus_when_given(helm: Helm) -> None:
    values = {
        "webui": {"enabled": True, "prometheusUrl": "http://prom.monitoring:9090"},
        "monitor": {"enabled": True},
    }
    objs = helm.render(CHART, release="hami", namespace="hami-system", values=values)
    (dep,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "hami-webui"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--prometheus-url=http://prom.monitoring:9090" in args
    assert not any(a.startswith("--monitor-selector") for a in args)
    with pytest.raises(HelmError, match="prometheusUrl"):
        helm.render(
            CHART, release="hami", namespace="hami-system", values={"webui": {"prometheusUrl": "prom:9090"}}
        )


def _plugin_pod(helm: Helm, device_plugin: dict[str, object]) -> dict[str, Any]:
    objs = helm.render(CHART, release="hami", namespace="x", values={"devicePlugin": device_plugin})
    (ds,) = [o for o in objs if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "hami-device-plugin"]
    pod: dict[str, Any] = ds["spec"]["template"]["spec"]
    return pod


def test_lock_free_mode_mounts_the_cdi_dir_and_pod_resources(helm: Helm) -> None:
    pod = _plugin_pod(helm, {"allocationMode": "cdi"})
    (plugin,) = [c for c in pod["containers"] if c["name"] == "device-plugin"]
    assert plugin["args"][-3:] == [
        "--allocation-mode=cdi",
        "--cdi-spec-dir=/var/run/cdi",
        "--pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock",
    ]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host["cdi-specs"] == "/var/run/cdi"
    assert host["pod-resources"] == "/var/lib/kubelet/pod-resources"
    mounts = {m["name"]: m for m in plugin["volumeMounts"]}
    assert mounts["pod-resources"]["readOnly"] is True
    assert "readOnly" not in mounts["cdi-specs"]
    # a per-node override mounts them too, but leaves the cluster default (lock) on the command line
    per_node = {"nodeConfiguration": {"config": '{"nodeconfig": [{"name": "n1", "allocationmode": "cdi"}]}'}}
    pod = _plugin_pod(helm, per_node)
    (plugin,) = [c for c in pod["containers"] if c["name"] == "device-plugin"]
    assert "--allocation-mode=cdi" not in plugin["args"]
    assert {"cdi-specs", "pod-resources"} <= {m["name"] for m in plugin["volumeMounts"]}


def test_lock_free_mode_value_is_checked(helm: Helm) -> None:
    with pytest.raises(HelmError, match="allocationMode"):
        helm.render(CHART, release="hami", namespace="x", values={"devicePlugin": {"allocationMode": "dra"}})


@pytest.mark.parametrize(
    "content",
    [
        "vnpus:\n  hamiVnpuCore: true\n  configs:\n"
        "  - {chipName: 910B3, commonWord: Ascend910B3, resourceName: huawei.com/npu-b3}\n"
        "  - {chipName: 310P3, commonWord: Ascend310P, resourceCoreName: huawei.com/p-core}\n",
        "vnpus:\n- {chipName: 910B4, commonWord: Ascend910B4}\n",
    ],
)
def test_ascend_chips_are_managed_as_the_registry_lists_them(helm: Helm, content: str) -> None:
    """Issue 13: each vnpus chip's three names (count, -memory, -core; overrides honoured) reach
    managedResources exactly as hami's registry lists them, in both of HAMi's section forms."""
    objs = helm.render(CHART, release="hami", namespace="x", values={"device-config": {"content": content}})
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "hami-scheduler"]
    shipped = yaml.safe_load(cm["data"]["config.yaml"])
    cfg, _ = parse_device_config(content)
    names = [r["name"] for r in shipped["extenders"][0]["managedResources"]]
    assert names == default_registry(cfg).resource_names()
    assert any(n.startswith("huawei.com/") for n in names)
