"""Prometheus metrics of the extender: latency and outcomes, plus HAMi's per-card allocation gauges.

The per-card gauges keep HAMi's names and labels (``hami_gpu_memory_allocated_bytes{node,
device_uuid,device_index,device_type,device_cores}`` ...) so existing dashboards keep working; they
are computed from the usage ledger at scrape time. Namespace quota is HAMi's
``hami_resource_quota_limit{namespace,quota_name}`` and ``hami_resource_quota_used{namespace,
quota_name,limit}`` (``quota_name`` is the resource, e.g. ``nvidia.com/gpumem``; memory in MiB).

Beyond HAMi: ``hami_pods_unschedulable{zone,reason}`` counts the pods this scheduler is to place
that kube-scheduler marked unschedulable (``PodScheduled=False``, reason ``Unschedulable``), by the
first of a fixed set of reasons its message names (the extender's filter verdicts reach the message
through kube-scheduler), so the family has a bounded set of series, all always present.

``legacy=True`` (``--legacy-metrics``) adds HAMi's pre-2.10 names for the same rows, with HAMi's
legacy label names (``nodeid, deviceuuid, deviceidx, devicetype`` ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hami.protocol.pod import MigAllocation
from hami.scheduling.state import ClusterState

MIB = 1024 * 1024
#: the results of a device-only preemption try (:mod:`hami.extender.devicepreempt`)
PREEMPTION_RESULTS = ("evicted", "no-victims", "never", "refused", "error")


class Metrics:
    def __init__(
        self,
        state: ClusterState,
        *,
        pods: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
        scheduler_name: str = "hami-scheduler",
        legacy: bool = False,
    ) -> None:
        self.registry = CollectorRegistry()
        buckets = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.filter_seconds = Histogram(
            "hami_scheduler_filter_duration_seconds",
            "Time to answer /filter",
            buckets=buckets,
            registry=self.registry,
        )
        self.bind_seconds = Histogram(
            "hami_scheduler_bind_duration_seconds",
            "Time to answer /bind",
            buckets=buckets,
            registry=self.registry,
        )
        self.filter_results = Counter(
            "hami_scheduler_filter_results_total", "Filter outcomes", ["result"], registry=self.registry
        )
        self.preemptions = Counter(
            "hami_scheduler_device_preemptions_total",
            "Device-only preemption tries by result",
            ["result"],
            registry=self.registry,
        )
        for result in PREEMPTION_RESULTS:  # every series present from the start
            self.preemptions.labels(result)
        self.preemption_victims = Counter(
            "hami_scheduler_device_preemption_victims_total",
            "Pods evicted by device-only preemption",
            registry=self.registry,
        )
        self.bind_results = Counter(
            "hami_scheduler_bind_results_total", "Bind outcomes", ["result"], registry=self.registry
        )
        cards, quota = _CardCollector(state), _QuotaCollector(state)
        self.registry.register(cards)
        self.registry.register(quota)
        if pods is not None:
            self.registry.register(_WaitingCollector(pods, scheduler_name))
        if legacy:
            self.registry.register(_LegacyCollector(cards, quota))

    def preempted(self, result: str, victims: int) -> None:
        """One device-only preemption try (:mod:`hami.extender.devicepreempt`)."""
        self.preemptions.labels(result).inc()
        if victims:
            self.preemption_victims.inc(victims)


ZONE = "vGPU"


class _CardCollector(Collector):
    """HAMi's per-card and per-pod allocation families (const label ``zone="vGPU"``, as HAMi)."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["zone", "node", "device_uuid", "device_index", "device_type"]
        mem_limit = GaugeMetricFamily("hami_gpu_memory_limit_bytes", "Card memory", labels=labels)
        core_limit = GaugeMetricFamily("hami_gpu_core_limit_ratio", "Card cores (percent)", labels=labels)
        mem_alloc = GaugeMetricFamily(
            "hami_gpu_memory_allocated_bytes", "Card memory allocated", labels=[*labels, "device_cores"]
        )
        core_alloc = GaugeMetricFamily(
            "hami_gpu_core_allocated_ratio", "Card cores allocated (percent)", labels=labels
        )
        shared = GaugeMetricFamily("hami_gpu_shared_count", "Slices in use on the card", labels=labels)
        overview = GaugeMetricFamily(
            "hami_node_gpu_overview",
            "Card memory allocated (bytes), with the card's cores and memory (MiB) as labels",
            labels=[*labels, "device_cores", "device_memory_limit"],
        )
        mem_ratio = GaugeMetricFamily(
            "hami_node_gpu_memory_allocated_ratio", "Card memory allocated (0-1)", labels=labels
        )
        yield from self._cards(mem_limit, core_limit, mem_alloc, core_alloc, shared, overview, mem_ratio)
        yield from self._pods()

    def _cards(self, *fams: GaugeMetricFamily) -> Iterator[GaugeMetricFamily]:
        mem_limit, core_limit, mem_alloc, core_alloc, shared, overview, mem_ratio = fams
        for node in self.state.nodes.values():
            for c in node.cards:
                lv = [ZONE, node.name, c.uuid, str(c.index), c.type]
                mem_limit.add_metric(lv, c.totalmem * MIB)
                core_limit.add_metric(lv, c.totalcores)
                mem_alloc.add_metric([*lv, str(c.totalcores)], c.usedmem * MIB)
                core_alloc.add_metric(lv, c.usedcores)
                shared.add_metric(lv, c.used)
                overview.add_metric([*lv, str(c.totalcores), str(c.totalmem)], c.usedmem * MIB)
                if c.totalmem > 0:
                    mem_ratio.add_metric(lv, c.usedmem / c.totalmem)
        yield from fams

    def _pods(self) -> Iterator[GaugeMetricFamily]:
        pod_labels = ["zone", "namespace", "node", "pod", "container_index", "device_uuid"]
        mem = GaugeMetricFamily(
            "hami_vgpu_memory_allocated_bytes", "Card memory allocated to a container", labels=pod_labels
        )
        cores = GaugeMetricFamily(
            "hami_vgpu_core_allocated_ratio",
            "Card cores allocated to a container (percent)",
            labels=pod_labels,
        )
        mig = GaugeMetricFamily(
            "hami_node_gpu_mig_instance_info",
            "MIG instance held by a pod",
            labels=[
                "zone", "node", "device_uuid", "device_index", "mig_uuid", "profile",
                "gpu_instance_id", "compute_instance_id", "placement_start", "placement_size",
            ],
        )  # fmt: skip
        for alloc in self.state.pods.values():
            node = self.state.nodes.get(alloc.node)
            for per_container in alloc.containers.values():
                for ci, placements in enumerate(per_container):
                    for p in placements:
                        d = p.device
                        lv = [ZONE, alloc.namespace, alloc.node, alloc.name, str(ci), d.uuid]
                        mem.add_metric(lv, d.usedmem * MIB)
                        cores.add_metric(lv, d.usedcores)
                        m = p.payload  # a MIG reservation rides on the placement as its payload
                        if not isinstance(m, MigAllocation):
                            continue
                        card = node.by_uuid.get(d.uuid) if node is not None else None
                        mig.add_metric(
                            [
                                ZONE, alloc.node, d.uuid, str(card.index) if card is not None else "",
                                m.mig_uuid or "", m.profile,
                                "" if m.gpu_instance_id is None else str(m.gpu_instance_id),
                                "" if m.compute_instance_id is None else str(m.compute_instance_id),
                                str(m.placement_start), str(m.placement_size),
                            ],
                            1,
                        )  # fmt: skip
        yield from (mem, cores, mig)


class _QuotaCollector(Collector):
    """HAMi's namespace quota families: one series per namespace and limited resource."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        quota = self.state.quota
        limit = GaugeMetricFamily(
            "hami_resource_quota_limit",
            "resourcequota limit for a certain device",
            labels=["zone", "namespace", "quota_name"],
        )
        used = GaugeMetricFamily(
            "hami_resource_quota_used",
            "resourcequota usage for a certain device",
            labels=["zone", "namespace", "quota_name", "limit"],
        )
        for ns, limits in sorted(quota.limits.items()):
            in_use = quota.used.get(ns, {})
            for res, lim in sorted(limits.items()):
                limit.add_metric([ZONE, ns, res], lim.value)
                used.add_metric([ZONE, ns, res, str(lim.value)], in_use.get(res, 0))
        yield from (limit, used)


#: ``hami_pods_unschedulable`` reasons, most specific first: (label, tokens any of which in the
#: pod's PodScheduled message selects it). A message naming none is ``other``.
UNSCHEDULABLE_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("quota", ("quota",)),
    ("card_memory", ("CardInsufficientMemory", "is more than the largest")),
    ("card_cores", ("CardInsufficientCore", "CardComputeUnitsExhausted")),
    ("card_slots", ("CardTimeSlicingExhausted",)),
    ("card_unhealthy", ("CardNotHealth", "CardCordoned")),
    ("exclusive", ("ExclusiveDeviceAllocateConflict",)),
    ("numa", ("NumaNotFit",)),
    ("card_type", ("CardTypeMismatch", "CardUuidMismatch")),
    ("node_devices", ("NodeInsufficientDevice", "AllocatedCardsInsufficientRequest")),
    ("invalid_request", ("container '", "requests no managed device", "invalid request")),
)
OTHER = "other"


def unschedulable_reason(message: str) -> str:
    """The bounded reason label for a PodScheduled=False message."""
    for label, tokens in UNSCHEDULABLE_REASONS:
        if any(t in message for t in tokens):
            return label
    return OTHER


def waiting_reason(pod: Mapping[str, Any], scheduler_name: str) -> str | None:
    """The reason label when ``pod`` is this scheduler's and waits unschedulable, else None."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if spec.get("schedulerName") != scheduler_name or spec.get("nodeName"):
        return None
    if status.get("phase", "Pending") != "Pending":
        return None
    for cond in status.get("conditions") or ():
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            return unschedulable_reason(str(cond.get("message") or ""))
    return None


class _WaitingCollector(Collector):
    """``hami_pods_unschedulable{zone,reason}``: every reason always present (0 when none wait)."""

    def __init__(self, pods: Callable[[], Iterable[Mapping[str, Any]]], scheduler_name: str) -> None:
        self.pods = pods
        self.scheduler_name = scheduler_name

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = dict.fromkeys([label for label, _ in UNSCHEDULABLE_REASONS] + [OTHER], 0)
        for pod in self.pods():
            reason = waiting_reason(pod, self.scheduler_name)
            if reason is not None:
                counts[reason] += 1
        fam = GaugeMetricFamily(
            "hami_pods_unschedulable",
            "Pods waiting for devices, by why kube-scheduler last found no node",
            labels=["zone", "reason"],
        )
        for reason, n in counts.items():
            fam.add_metric([ZONE, reason], n)
        yield fam


#: HAMi's legacy label names for the current ones
LEGACY_LABELS = {
    "node": "nodeid",
    "device_uuid": "deviceuuid",
    "device_index": "deviceidx",
    "device_type": "devicetype",
    "device_cores": "devicecores",
    "device_memory_limit": "devicememorylimit",
    "namespace": "podnamespace",
    "pod": "podname",
    "container_index": "ctridx",
    "mig_uuid": "miguuid",
    "gpu_instance_id": "gpuinstanceid",
    "compute_instance_id": "computeinstanceid",
    "placement_start": "placementstart",
    "placement_size": "placementsize",
    "quota_name": "quotaname",
}
#: ``--legacy-metrics``: HAMi's pre-2.10 scheduler names (reference 8.2), from the current families
LEGACY_NAMES = {
    "hami_gpu_memory_limit_bytes": "GPUDeviceMemoryLimit",
    "hami_gpu_core_limit_ratio": "GPUDeviceCoreLimit",
    "hami_gpu_memory_allocated_bytes": "GPUDeviceMemoryAllocated",
    "hami_gpu_shared_count": "GPUDeviceSharedNum",
    "hami_gpu_core_allocated_ratio": "GPUDeviceCoreAllocated",
    "hami_node_gpu_overview": "nodeGPUOverview",
    "hami_node_gpu_memory_allocated_ratio": "nodeGPUMemoryPercentage",
    "hami_node_gpu_mig_instance_info": "nodeGPUMigInstance",
    "hami_resource_quota_used": "QuotaUsed",
    "hami_vgpu_memory_allocated_bytes": "vGPUMemoryAllocated",
    "hami_vgpu_core_allocated_ratio": "vGPUCoreAllocated",
}


def legacy_family(fam: Any) -> GaugeMetricFamily | None:
    """The legacy twin of a current family (None for a family HAMi had no legacy name for)."""
    name = LEGACY_NAMES.get(fam.name)
    if name is None:
        return None
    names: list[str] = []
    rows = []
    for s in fam.samples:
        if not names:
            names = [LEGACY_LABELS.get(k, k) for k in s.labels]
        rows.append(([str(v) for v in s.labels.values()], s.value))
    out = GaugeMetricFamily(name, fam.documentation, labels=names)
    for values, v in rows:
        out.add_metric(values, v)
    return out


class _LegacyCollector(Collector):
    def __init__(self, *sources: Collector) -> None:
        self.sources = sources

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for src in self.sources:
            for fam in src.collect():
                legacy = legacy_family(fam)
                if legacy is not None:
                    yield legacy
