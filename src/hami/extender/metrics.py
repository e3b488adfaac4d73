"""Prometheus metrics of the extender: latency and outcomes, plus HAMi's per-card allocation gauges.

The per-card gauges keep HAMi's names and labels (``hami_gpu_memory_allocated_bytes{node,
device_uuid,device_index,device_type,device_cores}`` ...) so existing dashboards keep working; they
are computed from the usage ledger at scrape time. Namespace quota is HAMi's
``hami_resource_quota_limit{namespace,quota_name}`` and ``hami_resource_quota_used{namespace,
quota_name,limit}`` (``quota_name`` is the resource, e.g. ``nvidia.com/gpumem``; memory in MiB).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hami.protocol.pod import MigAllocation
from hami.scheduling.state import ClusterState

MIB = 1024 * 1024


class Metrics:
    def __init__(self, state: ClusterState) -> None:
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
        self.bind_results = Counter(
            "hami_scheduler_bind_results_total", "Bind outcomes", ["result"], registry=self.registry
        )
        self.registry.register(_CardCollector(state))
        self.registry.register(_QuotaCollector(state))


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
