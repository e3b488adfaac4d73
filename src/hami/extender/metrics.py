"""Prometheus metrics of the extender: latency and outcomes, plus HAMi's per-card allocation gauges.

The per-card gauges keep HAMi's names and labels (``hami_gpu_memory_allocated_bytes{node,
device_uuid,device_index,device_type,device_cores}`` ...) so existing dashboards keep working; they
are computed from the usage ledger at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


class _CardCollector(Collector):
    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["node", "device_uuid", "device_index", "device_type"]
        mem_limit = GaugeMetricFamily("hami_gpu_memory_limit_bytes", "Card memory", labels=labels)
        core_limit = GaugeMetricFamily("hami_gpu_core_limit_ratio", "Card cores (percent)", labels=labels)
        mem_alloc = GaugeMetricFamily(
            "hami_gpu_memory_allocated_bytes", "Card memory allocated", labels=[*labels, "device_cores"]
        )
        core_alloc = GaugeMetricFamily(
            "hami_gpu_core_allocated_ratio", "Card cores allocated (percent)", labels=labels
        )
        shared = GaugeMetricFamily("hami_gpu_shared_count", "Slices in use on the card", labels=labels)
        for node in self.state.nodes.values():
            for c in node.cards:
                lv = [node.name, c.uuid, str(c.index), c.type]
                mem_limit.add_metric(lv, c.totalmem * MIB)
                core_limit.add_metric(lv, c.totalcores)
                mem_alloc.add_metric([*lv, str(c.totalcores)], c.usedmem * MIB)
                core_alloc.add_metric(lv, c.usedcores)
                shared.add_metric(lv, c.used)
        yield from (mem_limit, core_limit, mem_alloc, core_alloc, shared)
