"""The value sets the chart tests render, and a small view of one rendering."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "hami"

Obj = dict[str, Any]


@dataclass(frozen=True)
class ValueSet:
    release: str
    namespace: str
    #: the chart's fullname for this release (the prefix of every object's name)
    fullname: str
    values: dict[str, Any] = field(default_factory=dict)


VALUE_SETS: dict[str, ValueSet] = {
    # what `helm install hami charts/hami -n hami-system` renders (deploy/ is this rendering)
    "default": ValueSet("hami", "hami-system", "hami"),
    # everything optional switched on, HAMi-style keys changed from their defaults
    "full": ValueSet(
        "gpu",
        "chart-full",
        "gpu-hami",
        {
            "global": {"imageRegistry": "registry.example", "imagePullSecrets": ["pull"], "imageTag": "v9"},
            "resourceName": "example.com/vgpu",
            "resourceMem": "example.com/vgpu-mem",
            "resourceMemPercentage": "example.com/vgpu-mem-pct",
            "resourceCores": "example.com/vgpu-cores",
            "resourcePriority": "example.com/vgpu-priority",
            "schedulerName": "gpu-sched",
            "scheduler": {
                "replicas": 3,
                "nodeLockExpire": "5m",
                "extenderHTTPTimeout": 45,
                "metricsBindAddress": "0.0.0.0:9500",
                "defaultSchedulerPolicy": {
                    "nodeSchedulerPolicy": "spread",
                    "gpuSchedulerPolicy": "topology-aware",
                },
                "forceOverwriteDefaultScheduler": False,
                "service": {"type": "NodePort"},
                "admissionWebhook": {
                    "failurePolicy": "Ignore",
                    "whitelistNamespaces": ["batch"],
                    "namespaceSelector": {"matchLabels": {"gpu-tenant": "yes"}},
                },
                "extender": {"extraArgs": ["--bind-queue-limit=4"]},
            },
            "devicePlugin": {
                "deviceSplitCount": 4,
                "deviceMemoryScaling": 1.5,
                "migStrategy": "mixed",
                "disablecorelimit": "true",
                "runtimeClassName": "nvidia-hami",
                "createRuntimeClass": True,
                "nodeConfiguration": {"config": '{"nodeconfig": [{"name": "n1", "devicesplitcount": 2}]}'},
                "fakeNode": "cards: []\n",
                "extraEnvs": {"LOG_LEVEL": "debug"},
            },
            "draPlugin": {"enabled": True, "cdiDir": "/run/cdi", "extraArgs": ["--log-level=DEBUG"]},
            "monitor": {
                "service": {"type": "NodePort"},
                "nvml": {"hostPath": "/opt/driver/lib", "env": {"DRIVER_NODE": "$(NODE_NAME)"}},
            },
            "webui": {"enabled": True, "usageInterval": 2},
            "devices": {"nvidia": {"gpuCorePolicy": "force", "libCudaLogLevel": 3}},
            "hami": {"enforcementOptOutNamespaces": ["research"]},
            "prometheus": {"enabled": True, "labels": {"release": "kube-prometheus"}},
            "dashboard": {"enabled": True, "annotations": {"grafana_folder": "GPU"}},
            "dra": {"enabled": True, "webhookMode": "all"},
        },
    ),
    # webhook certificate from cert-manager; one scheduler replica without leader election; every
    # pod sent to the webhook
    "certmanager": ValueSet(
        "hami",
        "chart-certmanager",
        "hami-cm",
        {
            "fullnameOverride": "hami-cm",
            # overwriteEnv: every pod reaches the webhook, so hami's namespace and kube-system are skipped
            "scheduler": {
                "certManager": {"enabled": True},
                "leaderElect": False,
                "overwriteEnv": True,
                "preemption": {"enabled": False},
            },
        },
    ),
    # the bare extender: no webhook, no device plugin, no monitor, no policy, the device config given
    # whole
    "minimal": ValueSet(
        "bare",
        "chart-minimal",
        "bare-hami",
        {
            "scheduler": {"admissionWebhook": {"enabled": False}},
            "devicePlugin": {"enabled": False},
            "monitor": {"enabled": False},
            "admissionPolicy": {"enabled": False},
            "device-config": {"content": "nvidia:\n  deviceSplitCount: 7\n"},
        },
    ),
}


@dataclass(frozen=True)
class Rendered:
    """One ``helm template`` output."""

    values: ValueSet
    objects: list[Obj]

    def kinds(self) -> list[tuple[str, str]]:
        return sorted((o["kind"], o["metadata"]["name"]) for o in self.objects)

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind} {name}: {len(found)} rendered; have {self.kinds()}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(o["kind"] == kind and o["metadata"]["name"] == name for o in self.objects)

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def container(self, kind: str, name: str, container: str) -> Obj:
        spec = self.get(kind, name)["spec"]["template"]["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            if c["name"] == container:
                return dict(c)
        raise AssertionError(f"{kind} {name} has no container {container}")
