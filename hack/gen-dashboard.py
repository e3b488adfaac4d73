#!/usr/bin/env python3
"""Writes hami's Grafana dashboard (charts/hami/dashboards/hami.json and its copy docs/grafana-dashboard.json).

Every panel of HAMi's "HAMi vGPU metrics" dashboard, against the same families and labels, plus
hami's own rows (per-namespace allocated vs used, quota, throttling and priority holds,
fragmentation, pods waiting for devices, scheduler latency). Panels are declared below; the JSON is
generated so ids, grid positions and datasources stay consistent. Re-run after editing:

    python3 hack/gen-dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = (ROOT / "charts" / "hami" / "dashboards" / "hami.json", ROOT / "docs" / "grafana-dashboard.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
N = '{node=~"$node"}'
NS = '{namespace=~"$namespace"}'
CTR = "{{namespace}}/{{pod}}/{{container}} v{{vdevice_index}}"
CARD = "{{node}} idx{{device_index}} ({{device_uuid}})"
GIB = 1 << 30
# free memory per card: capacity less what the scheduler allocated
FREE = f"(hami_gpu_memory_limit_bytes{N} - ignoring (device_cores) hami_gpu_memory_allocated_bytes{N})"
RATE = "5m"

Target = tuple[str, str]  # expr, legend


def stat(title: str, desc: str, unit: str, expr: str, legend: str = "") -> dict[str, Any]:
    return {"type": "stat", "title": title, "description": desc, "unit": unit, "targets": [(expr, legend)]}


def series(title: str, desc: str, unit: str, *targets: Target, **extra: Any) -> dict[str, Any]:
    return {"type": "timeseries", "title": title, "description": desc, "unit": unit, "targets": list(targets), **extra}


def table(title: str, desc: str, unit: str, expr: str) -> dict[str, Any]:
    return {"type": "table", "title": title, "description": desc, "unit": unit, "targets": [(expr, "__auto")]}


ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    (
        "Cluster overview",
        [
            stat("Physical GPUs", "Cards the scheduler knows on the selected nodes.", "none",
                 f"count(hami_gpu_memory_limit_bytes{N})", "GPUs"),
            stat("Total GPU memory", "Schedulable device memory on the selected nodes.", "bytes",
                 f"sum(hami_gpu_memory_limit_bytes{N})", "Total"),
            stat("Allocated GPU memory", "Device memory the scheduler allocated to pods.", "bytes",
                 f"sum(hami_gpu_memory_allocated_bytes{N})", "Allocated"),
            stat("GPU memory allocated %", "Allocated device memory as a share of the total.", "percent",
                 f"100 * sum(hami_gpu_memory_allocated_bytes{N}) / sum(hami_gpu_memory_limit_bytes{N})",
                 "Allocated %"),
            stat("Shared containers", "Device slices in use on the selected nodes.", "none",
                 f"sum(hami_gpu_shared_count{N})", "Shared"),
            stat("Pods waiting for devices", "Pods kube-scheduler found no node for (hami's own).", "none",
                 "sum(hami_pods_unschedulable)", "Waiting"),
        ],
    ),
    (
        "Physical GPUs (host, NVML)",
        [
            series("Host GPU memory used", "Real device memory in use per card, read from NVML by the monitor.",
                   "bytes", (f"hami_host_gpu_memory_used_bytes{N}", CARD)),
            series("Host GPU utilization", "Card utilisation per card (0-100%), from NVML.", "percent",
                   (f"hami_host_gpu_utilization_ratio{N}", CARD), max=100),
            series("Host memory controller utilization", "Memory controller utilisation per card, from NVML.",
                   "percent", (f"hami_host_gpu_memory_controller_utilization_ratio{N}", CARD), max=100),
        ],
    ),
    (
        "Scheduler / allocation",
        [
            series("GPU memory: allocated vs limit", "The scheduler's view per node.", "bytes",
                   (f"sum by (node) (hami_gpu_memory_allocated_bytes{N})", "allocated {{node}}"),
                   (f"sum by (node) (hami_gpu_memory_limit_bytes{N})", "limit {{node}}")),
            series("Node GPU memory allocated ratio", "Allocated device memory per card (0-1).", "percentunit",
                   (f"hami_node_gpu_memory_allocated_ratio{N}", "{{node}} idx{{device_index}}"), max=1),
            series("GPU core allocated ratio", "Cores allocated per card (percent).", "percent",
                   (f"hami_gpu_core_allocated_ratio{N}", CARD), max=100),
            series("GPU shared count per device", "Containers sharing each card.", "none",
                   (f"hami_gpu_shared_count{N}", CARD)),
            table("Card overview", "Each card's cores, memory (MiB) and allocated bytes.", "bytes",
                  f"hami_node_gpu_overview{N}"),
            table("MIG instances", "MIG instances held by pods (scheduler) and given to containers (monitor).",
                  "none", f'hami_node_gpu_mig_instance_info{N} or hami_mig_device_info{NS}'),
        ],
    ),
    (
        "vGPU / containers",
        [
            series("vGPU memory: used vs limit", "Per-container device memory used against its limit.", "bytes",
                   (f"hami_vgpu_memory_used_bytes{NS}", "used " + CTR),
                   (f"hami_vgpu_memory_limit_bytes{NS}", "limit " + CTR)),
            series("Container device utilization", "Per-container utilisation of its card (0-100%).", "percent",
                   (f"hami_container_device_utilization_ratio{NS}", CTR), max=100),
            series("vGPU memory used % of limit", "Device memory used as a share of each container's limit.",
                   "percent", (f"100 * hami_vgpu_memory_used_bytes{NS} / hami_vgpu_memory_limit_bytes{NS}", CTR),
                   max=100),
            table("Top 10 containers by vGPU memory", "Containers using the most device memory now.", "bytes",
                  f"topk(10, hami_vgpu_memory_used_bytes{NS})"),
            series("Container memory by kind", "Contexts, modules and allocations, and their total, per container.",
                   "bytes",
                   (f"sum by (namespace, pod, container) (hami_vgpu_memory_context_bytes{NS})",
                    "context {{namespace}}/{{pod}}/{{container}}"),
                   (f"sum by (namespace, pod, container) (hami_vgpu_memory_module_bytes{NS})",
                    "module {{namespace}}/{{pod}}/{{container}}"),
                   (f"sum by (namespace, pod, container) (hami_vgpu_memory_buffer_bytes{NS})",
                    "buffer {{namespace}}/{{pod}}/{{container}}"),
                   (f"sum by (namespace, pod, container) (hami_container_device_memory_bytes{NS})",
                    "total {{namespace}}/{{pod}}/{{container}}")),
            series("Container memory peak", "Each container's device memory high-water mark.", "bytes",
                   (f"hami_vgpu_memory_peak_bytes{NS}", CTR)),
            series("Time since last kernel", "Seconds since the container last launched work.", "s",
                   (f"hami_container_last_kernel_elapsed_seconds{NS}", CTR)),
            series("Allocated per container", "What the scheduler allocated to each container.", "bytes",
                   (f"hami_vgpu_memory_allocated_bytes{NS}",
                    "{{namespace}}/{{pod}} c{{container_index}} {{device_uuid}}")),
            series("Cores allocated per container", "Cores (percent of a card) allocated to each container.",
                   "percent", (f"hami_vgpu_core_allocated_ratio{NS}",
                               "{{namespace}}/{{pod}} c{{container_index}} {{device_uuid}}"), max=100),
        ],
    ),
    (
        "Namespaces and quota",
        [
            series("Device memory per namespace: allocated vs used",
                   "Allocated by the scheduler against used by the namespace's processes.", "bytes",
                   (f"sum by (namespace) (hami_vgpu_memory_allocated_bytes{NS})", "allocated {{namespace}}"),
                   (f"sum by (namespace) (hami_namespace_gpu_memory_used_bytes{NS})", "used {{namespace}}")),
            series("Allocated but unused per namespace", "Device memory the namespace holds and does not use.",
                   "bytes",
                   (f"sum by (namespace) (hami_namespace_gpu_memory_limit_bytes{NS})"
                    f" - sum by (namespace) (hami_namespace_gpu_memory_used_bytes{NS})", "{{namespace}}")),
            series("Quota: used vs limit", "ResourceQuota usage of device resources (memory in MiB).", "none",
                   (f"hami_resource_quota_used{NS}", "used {{namespace}} {{quota_name}}"),
                   (f"hami_resource_quota_limit{NS}", "limit {{namespace}} {{quota_name}}")),
            series("Quota used %", "ResourceQuota usage as a share of its limit.", "percent",
                   (f"100 * hami_resource_quota_used{NS} / ignoring (limit) hami_resource_quota_limit{NS}",
                    "{{namespace}} {{quota_name}}"), max=100),
        ],
    ),
    (
        "Throttling and priority",
        [
            series("Throttled time per container",
                   "Seconds per second the container's launches on the card waited, in the core limiter or a "
                   "priority hold (5-minute rate; several waiting threads can add up past 1).",
                   "percentunit",
                   (f"rate(hami_container_throttled_seconds_total{NS}[{RATE}])", CTR)),
            series("Core limit pacing", "Share of the last 5 minutes the core limit paced launches.",
                   "percentunit",
                   (f"avg_over_time(hami_container_device_throttled{NS}[{RATE}])", CTR), max=1),
            series("Core limit per container", "The core limit (percent) each container runs under.", "percent",
                   (f"hami_vgpu_core_limit_ratio{NS}", CTR), max=100),
            series("Priority holds", "Share of the last 5 minutes a higher-priority container held launches.",
                   "percentunit",
                   (f"avg_over_time(hami_container_priority_held{NS}[{RATE}])",
                    "{{namespace}}/{{pod}}/{{container}}"), max=1),
            series("Task priority and processes", "Each container's priority (0 high) and running processes.",
                   "none",
                   (f"hami_container_priority{NS}", "priority {{namespace}}/{{pod}}/{{container}}"),
                   (f"hami_container_processes{NS}", "processes {{namespace}}/{{pod}}/{{container}}")),
        ],
    ),
    (
        "Fragmentation",
        [
            series("Free memory per card", "Device memory not allocated, per card.", "bytes", (FREE, CARD)),
            series("Cards that fit a request of", "Cards with at least this much free device memory.", "none",
                   *((f"sum({FREE} >= bool {n * GIB})", f">= {n} GiB") for n in (1, 4, 8, 16))),
            series("Largest free slice per node", "The most device memory one card of the node can still give.",
                   "bytes", (f"max by (node) ({FREE})", "{{node}}")),
            series("Stranded memory per node",
                   "Free device memory on cards whose cores are all allocated (no pod can use it).", "bytes",
                   (f"sum by (node) ({FREE} * on (instance, node, device_uuid) "
                    f"(hami_gpu_core_allocated_ratio{N} >= bool hami_gpu_core_limit_ratio{N}))", "{{node}}")),
        ],
    ),
    (
        "Scheduler and monitor health",
        [
            series("Pods waiting for devices, by reason", "Pods kube-scheduler marked unschedulable, by reason.",
                   "none", ("sum by (reason) (hami_pods_unschedulable)", "{{reason}}")),
            series("Filter and bind latency (p99)", "99th percentile of the extender's answers.", "s",
                   (f"histogram_quantile(0.99, sum by (le) (rate(hami_scheduler_filter_duration_seconds_bucket[{RATE}])))",
                    "filter"),
                   (f"histogram_quantile(0.99, sum by (le) (rate(hami_scheduler_bind_duration_seconds_bucket[{RATE}])))",
                    "bind")),
            series("Filter and bind outcomes", "Answers per second, by result.", "reqps",
                   (f"sum by (result) (rate(hami_scheduler_filter_results_total[{RATE}]))", "filter {{result}}"),
                   (f"sum by (result) (rate(hami_scheduler_bind_results_total[{RATE}]))", "bind {{result}}")),
            series("Device-only preemptions", "The extender's own preemption tries per second, by result, and "
                   "the pods it evicted (docs/quota-preemption.md).", "ops",
                   (f"sum by (result) (rate(hami_scheduler_device_preemptions_total[{RATE}]))", "{{result}}"),
                   (f"sum(rate(hami_scheduler_device_preemption_victims_total[{RATE}]))", "evicted pods")),
            series("Monitor container regions", "Container directories each monitor sees, by state.", "none",
                   (f"hami_monitor_regions{N}", "{{node}} {{state}}")),
        ],
    ),
]


def panel(p: dict[str, Any], pid: int, x: int, y: int, w: int, h: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p["unit"], "mappings": [], "color": {"mode": "palette-classic"}}
    if "max" in p:
        defaults["min"], defaults["max"] = 0, p["max"]
    targets = []
    for i, (expr, legend) in enumerate(p["targets"]):
        t: dict[str, Any] = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend,
                             "refId": chr(ord("A") + i)}
        if p["type"] in ("stat", "table"):
            t["instant"] = True
        if p["type"] == "table":
            t["format"] = "table"
        targets.append(t)
    out: dict[str, Any] = {
        "datasource": DS,
        "description": p["description"],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "id": pid,
        "targets": targets,
        "title": p["title"],
        "type": p["type"],
    }
    if p["type"] == "stat":
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "text", "value": None}]}
        out["options"] = {"colorMode": "none", "graphMode": "area", "reduceOptions": {"calcs": ["lastNotNull"]}}
    elif p["type"] == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 2, "showPoints": "never"}
        out["options"] = {
            "legend": {"calcs": ["lastNotNull", "max"], "displayMode": "table", "placement": "bottom",
                       "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        out["options"] = {"showHeader": True}
        out["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True}}}]
    return out


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS, "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "StandardVariableQuery"},
        "includeAll": True, "allValue": ".*", "multi": True, "current": {}, "options": [], "refresh": 2,
        "sort": 1, "hide": 0,
    }  # fmt: skip


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for title, members in ROWS:
        panels.append({"collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "id": pid,
                       "panels": [], "title": title, "type": "row"})
        pid, y = pid + 1, y + 1
        small = all(p["type"] == "stat" for p in members)
        w, h = (4, 4) if small else (12, 8)
        for i, p in enumerate(members):
            x = (i * w) % 24
            if i and x == 0:
                y += h
            panels.append(panel(p, pid, x, y, w, h))
            pid += 1
        y += h
    return {
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": "hami (HAMi-compatible GPU sharing): cluster allocation from the scheduler, card and "
        "container usage from the node monitor, namespaces, quota, throttling, priority, fragmentation.",
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["hami", "gpu", "vgpu"],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "options": [], "refresh": 1, "regex": ""},
            variable("node", "Node", "label_values(hami_gpu_memory_limit_bytes, node)"),
            variable("namespace", "Namespace", "label_values(hami_vgpu_memory_allocated_bytes, namespace)"),
        ]},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "hami vGPU",
        "uid": "hami-vgpu",
        "version": 1,
    }  # fmt: skip


def main() -> None:
    text = json.dumps(dashboard(), indent=2) + "\n"
    for out in OUTPUTS:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(out.relative_to(ROOT))


if __name__ == "__main__":
    main()
