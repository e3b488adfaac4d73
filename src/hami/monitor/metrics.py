"""The node monitor's Prometheus collector: HAMi v2.10's families, computed at scrape time.

Every family carries the const label ``zone="vGPU"`` as HAMi's do (``hami_build_info`` aside).
Host labels: ``node, device_index, device_uuid, device_type``; container labels: ``namespace,
pod, container, vdevice_index, device_uuid``. Ratios are percent (0-100), bytes are bytes, as in
HAMi. A container directory whose pod is not (yet) in the pod list, or whose region is unreadable,
contributes no container series; it is counted in ``hami_monitor_regions{state}``.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hami.monitor.cards import CardReader, HostCard
from hami.monitor.layout import PodDirectory, PodRef, scan
from hami.monitor.region import Region, RegionError, read_region

log = logging.getLogger(__name__)

ZONE = "vGPU"
HOST_LABELS = ["zone", "node", "device_index", "device_uuid", "device_type"]
CTR_LABELS = ["zone", "namespace", "pod", "container", "vdevice_index", "device_uuid"]
MIG_LABELS = [*CTR_LABELS, "mig_uuid", "profile", "gpu_instance_id", "compute_instance_id"]


@dataclass
class _Families:
    host_mem: GaugeMetricFamily
    host_util: GaugeMetricFamily
    host_mc_util: GaugeMetricFamily
    used: GaugeMetricFamily
    limit: GaugeMetricFamily
    ctr_mem: GaugeMetricFamily
    ctr_util: GaugeMetricFamily
    last_kernel: GaugeMetricFamily
    mig: GaugeMetricFamily
    context: GaugeMetricFamily
    module: GaugeMetricFamily
    buffer: GaugeMetricFamily
    peak: GaugeMetricFamily
    core_limit: GaugeMetricFamily
    throttled: GaugeMetricFamily
    processes: GaugeMetricFamily
    ns_used: GaugeMetricFamily
    ns_limit: GaugeMetricFamily
    regions: GaugeMetricFamily

    @classmethod
    def new(cls) -> _Families:
        def g(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        return cls(
            host_mem=g("hami_host_gpu_memory_used_bytes", "GPU device memory used (NVML)", HOST_LABELS),
            host_util=g(
                "hami_host_gpu_utilization_ratio", "GPU core utilisation, percent (NVML)", HOST_LABELS
            ),
            host_mc_util=g(
                "hami_host_gpu_memory_controller_utilization_ratio",
                "GPU memory controller utilisation, percent (NVML)",
                HOST_LABELS,
            ),
            used=g("hami_vgpu_memory_used_bytes", "vGPU device memory used by the container", CTR_LABELS),
            limit=g("hami_vgpu_memory_limit_bytes", "vGPU device memory limit of the container", CTR_LABELS),
            ctr_mem=g(
                "hami_container_device_memory_bytes",
                "Device memory held by the container's live processes",
                CTR_LABELS,
            ),
            ctr_util=g(
                "hami_container_device_utilization_ratio",
                "The container's utilisation of the card, percent",
                CTR_LABELS,
            ),
            last_kernel=g(
                "hami_container_last_kernel_elapsed_seconds",
                "Seconds since the container last launched work",
                CTR_LABELS,
            ),
            mig=g("hami_mig_device_info", "MIG instance given to the container", MIG_LABELS),
            context=g("hami_vgpu_memory_context_bytes", "Device memory charged for contexts", CTR_LABELS),
            module=g("hami_vgpu_memory_module_bytes", "Device memory charged for modules", CTR_LABELS),
            buffer=g("hami_vgpu_memory_buffer_bytes", "Device memory charged for allocations", CTR_LABELS),
            peak=g("hami_vgpu_memory_peak_bytes", "High-water mark of the container's memory", CTR_LABELS),
            core_limit=g("hami_vgpu_core_limit_ratio", "The container's core limit, percent", CTR_LABELS),
            throttled=g(
                "hami_container_device_throttled",
                "1 while the container's launches are being paced by its core limit",
                CTR_LABELS,
            ),
            processes=g(
                "hami_container_processes", "Live processes in the container's region", CTR_LABELS[:4]
            ),
            ns_used=g(
                "hami_namespace_gpu_memory_used_bytes",
                "Device memory used by the namespace's containers on this node",
                ["zone", "node", "namespace"],
            ),
            ns_limit=g(
                "hami_namespace_gpu_memory_limit_bytes",
                "Device memory allocated (limits) to the namespace's containers on this node",
                ["zone", "node", "namespace"],
            ),
            regions=g(
                "hami_monitor_regions",
                "Container directories on the node by state (ok, unknown_pod, unreadable, empty)",
                ["zone", "node", "state"],
            ),
        )

    def all(self) -> Iterator[Metric]:
        yield from (
            self.host_mem,
            self.host_util,
            self.host_mc_util,
            self.used,
            self.limit,
            self.ctr_mem,
            self.ctr_util,
            self.last_kernel,
            self.mig,
            self.context,
            self.module,
            self.buffer,
            self.peak,
            self.core_limit,
            self.throttled,
            self.processes,
            self.ns_used,
            self.ns_limit,
            self.regions,
        )


def build_info(version: str, revision: str = "") -> GaugeMetricFamily:
    """``hami_build_info`` with HAMi's label names (``go_version`` holds the Python version)."""
    info = GaugeMetricFamily(
        "hami_build_info",
        "Build information",
        labels=["version", "revision", "build_date", "go_version", "compiler", "platform"],
    )
    info.add_metric(
        [
            version,
            revision,
            "",
            platform.python_version(),
            platform.python_implementation(),
            f"{sys.platform}/{platform.machine()}",
        ],
        1,
    )
    return info


class MonitorCollector(Collector):
    """Reads the container regions, the cards and the pod list at each scrape."""

    def __init__(
        self,
        root: str,
        node: str,
        pods: PodDirectory,
        cards: CardReader | None,
        *,
        version: str = "",
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.root = root
        self.node = node
        self.pods = pods
        self.cards = cards
        self.version = version
        self.monotonic_ns = monotonic_ns
        self._warned: set[str] = set()
        self._bad: dict[str, str] = {}  # path -> last error logged, so a bad file warns once

    def collect(self) -> Iterator[Metric]:
        f = _Families.new()
        host = self.cards.read() if self.cards is not None else []
        self._host(f, host)
        totals = {c.uuid: c.memory_total for c in host if c.memory_total}
        counts = {"ok": 0, "unknown_pod": 0, "unreadable": 0, "empty": 0}
        ns_used: dict[str, int] = {}
        ns_limit: dict[str, int] = {}
        now_ns = self.monotonic_ns()
        for d in scan(self.root, warned=self._warned):
            if d.cache is None:
                counts["empty"] += 1
                continue
            pod = self.pods.get(d.pod_uid)
            if pod is None:
                counts["unknown_pod"] += 1
                continue
            try:
                region = read_region(d.cache)
            except RegionError as e:
                counts["unreadable"] += 1
                if self._bad.get(d.cache) != str(e):
                    self._bad[d.cache] = str(e)
                    log.warning("skipping %s: %s", d.cache, e)
                continue
            self._bad.pop(d.cache, None)
            counts["ok"] += 1
            used, limit = self._container(f, pod, d.container, region, totals, now_ns)
            ns_used[pod.namespace] = ns_used.get(pod.namespace, 0) + used
            ns_limit[pod.namespace] = ns_limit.get(pod.namespace, 0) + limit
        for ns in sorted(ns_used):
            f.ns_used.add_metric([ZONE, self.node, ns], ns_used[ns])
            f.ns_limit.add_metric([ZONE, self.node, ns], ns_limit[ns])
        for state, n in counts.items():
            f.regions.add_metric([ZONE, self.node, state], n)
        yield from f.all()
        yield build_info(self.version)

    def _host(self, f: _Families, cards: list[HostCard]) -> None:
        for c in cards:
            lv = [ZONE, self.node, str(c.index), c.uuid, c.type]
            if c.memory_used is not None:
                f.host_mem.add_metric(lv, c.memory_used)
            if c.utilization is not None:
                f.host_util.add_metric(lv, c.utilization)
            if c.memory_utilization is not None:
                f.host_mc_util.add_metric(lv, c.memory_utilization)

    def _container(
        self, f: _Families, pod: PodRef, container: str, r: Region, totals: dict[str, int], now_ns: int
    ) -> tuple[int, int]:
        """Adds one container's series; returns its (used, limit) bytes summed over its cards."""
        allocated = pod.uuids_of(container)
        running = r.alive()
        f.processes.add_metric([ZONE, pod.namespace, pod.name, container], len(running))
        elapsed = (now_ns - r.last_kernel_ns) / 1e9 if r.last_kernel_ns else None
        sum_used = sum_limit = 0
        for dev in r.devices:
            uuid = dev.uuid or (allocated[dev.index] if dev.index < len(allocated) else "")
            lv = [ZONE, pod.namespace, pod.name, container, str(dev.index), uuid]
            # what running processes hold: a killed process's slot keeps its numbers until the
            # container's next process reclaims it, but the driver freed that memory already
            used = r.held(dev.index)
            limit = dev.limit or totals.get(uuid) or 0
            f.used.add_metric(lv, used)
            if limit:
                f.limit.add_metric(lv, limit)
            f.ctr_mem.add_metric(lv, used)
            f.ctr_util.add_metric(lv, dev.util_percent if running else 0.0)
            if elapsed is not None and elapsed >= 0:
                f.last_kernel.add_metric(lv, elapsed)
            context = min(used, dev.ctx_overhead * r.contexts_on(dev.index))
            f.context.add_metric(lv, context)
            f.module.add_metric(lv, 0)
            f.buffer.add_metric(lv, used - context)
            f.peak.add_metric(lv, dev.peak)
            f.core_limit.add_metric(lv, dev.sm_limit if 0 < dev.sm_limit < 100 else 100)
            f.throttled.add_metric(lv, 1 if dev.throttled and running else 0)
            sum_used += used
            sum_limit += limit
        ci = pod.container_index(container)
        for m in pod.migs:
            if m.container_index != ci:
                continue
            lv = [ZONE, pod.namespace, pod.name, container, str(m.device_index), m.gpu_uuid]
            f.mig.add_metric(
                [
                    *lv,
                    m.mig_uuid or "",
                    m.profile,
                    "" if m.gpu_instance_id is None else str(m.gpu_instance_id),
                    "" if m.compute_instance_id is None else str(m.compute_instance_id),
                ],
                1,
            )
        return sum_used, sum_limit
