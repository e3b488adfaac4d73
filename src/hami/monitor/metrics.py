"""The node monitor's Prometheus collector: HAMi v2.10's families, computed at scrape time.

Every family carries the const label ``zone="vGPU"`` as HAMi's do (``hami_build_info`` aside).
Host labels: ``node, device_index, device_uuid, device_type``; container labels: ``namespace,
pod, container, vdevice_index, device_uuid``. Ratios are percent (0-100), bytes are bytes, as in
HAMi. A container directory whose pod is not (yet) in the pod list, or whose region is unreadable,
contributes no container series; it is counted in ``hami_monitor_regions{state}``.

A scrape builds rows (label values, their rendered text, value) once; :meth:`MonitorCollector.collect`
hands them to prometheus-client as gauge families (any registry can hold the collector), and
:meth:`MonitorCollector.render` writes the text exposition straight from the rows, each
container/card label set escaped once for all its families: the monitor's endpoint uses it, as
prometheus-client's generic renderer re-validates and re-escapes every label of every sample
(about 4/5 of a 100-container x 8-card scrape's CPU).
"""

from __future__ import annotations

import logging
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hami.monitor.cards import CardReader, HostCard
from hami.monitor.layout import PodDirectory, PodRef, scan
from hami.monitor.region import Region, RegionError, read_region

log = logging.getLogger(__name__)

ZONE = "vGPU"
HOST_LABELS = ("zone", "node", "device_index", "device_uuid", "device_type")
CTR_LABELS = ("zone", "namespace", "pod", "container", "vdevice_index", "device_uuid")
MIG_LABELS = (*CTR_LABELS, "mig_uuid", "profile", "gpu_instance_id", "compute_instance_id")
PROC_LABELS = CTR_LABELS[:4]
NS_LABELS = ("zone", "node", "namespace")
STATE_LABELS = ("zone", "node", "state")
BUILD_LABELS = ("version", "revision", "build_date", "go_version", "compiler", "platform")

Labels = tuple[tuple[str, ...], str]  # label values, and their rendered `name="value",...` text


def _escape(v: str) -> str:
    if "\\" in v or '"' in v or "\n" in v:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def labels(names: tuple[str, ...], values: tuple[str, ...]) -> Labels:
    return values, ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


def _number(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


class Family:
    """One family's rows for one scrape: a gauge, or a counter when its name ends in ``_total``
    (the value is then a cumulative count that only a restart of what it counts resets)."""

    __slots__ = ("doc", "label_names", "name", "rows")

    def __init__(self, name: str, doc: str, label_names: tuple[str, ...]) -> None:
        self.name = name
        self.doc = doc
        self.label_names = label_names
        self.rows: list[tuple[Labels, float]] = []

    @property
    def kind(self) -> str:
        return "counter" if self.name.endswith("_total") else "gauge"

    def add(self, lv: Labels, value: float) -> None:
        self.rows.append((lv, value))

    def metric(self) -> Metric:
        """The rows as prometheus-client's family (a gauge, or a counter: see the class)."""
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        g = cls(self.name, self.doc, labels=list(self.label_names))
        for (values, _text), v in self.rows:
            g.add_metric(list(values), v)
        return g

    def text(self, out: list[str]) -> None:
        doc = self.doc.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {self.name} {doc}\n# TYPE {self.name} {self.kind}\n")
        prefix = self.name + "{"
        out.extend(f"{prefix}{lt}}} {_number(v)}\n" for (_lv, lt), v in self.rows)


@dataclass
class _Families:
    host_mem: Family
    host_util: Family
    host_mc_util: Family
    used: Family
    limit: Family
    ctr_mem: Family
    ctr_util: Family
    last_kernel: Family
    mig: Family
    context: Family
    module: Family
    buffer: Family
    peak: Family
    core_limit: Family
    throttled: Family
    throttled_seconds: Family
    processes: Family
    priority: Family
    held: Family
    ns_used: Family
    ns_limit: Family
    regions: Family

    @classmethod
    def new(cls) -> _Families:
        return cls(*(Family(name, doc, label_names) for name, doc, label_names in FAMILIES))

    def all(self) -> list[Family]:
        return [getattr(self, f.name) for f in fields(self)]


_H = "GPU {} (NVML)"
_C = "The container's {} on the card"
#: (name, help, labels) in :class:`_Families`' field order
FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("hami_host_gpu_memory_used_bytes", _H.format("memory used"), HOST_LABELS),
    ("hami_host_gpu_utilization_ratio", _H.format("utilisation, percent"), HOST_LABELS),
    (
        "hami_host_gpu_memory_controller_utilization_ratio",
        _H.format("memory controller utilisation, %"),
        HOST_LABELS,
    ),
    ("hami_vgpu_memory_used_bytes", _C.format("memory used by running processes"), CTR_LABELS),
    ("hami_vgpu_memory_limit_bytes", _C.format("memory limit"), CTR_LABELS),
    ("hami_container_device_memory_bytes", _C.format("memory held by running processes"), CTR_LABELS),
    ("hami_container_device_utilization_ratio", _C.format("utilisation, percent,"), CTR_LABELS),
    (
        "hami_container_last_kernel_elapsed_seconds",
        "Seconds since the container last launched work",
        CTR_LABELS,
    ),
    ("hami_mig_device_info", "MIG instance given to the container", MIG_LABELS),
    ("hami_vgpu_memory_context_bytes", _C.format("memory charged for contexts"), CTR_LABELS),
    ("hami_vgpu_memory_module_bytes", _C.format("memory charged for modules"), CTR_LABELS),
    ("hami_vgpu_memory_buffer_bytes", _C.format("memory charged for allocations"), CTR_LABELS),
    ("hami_vgpu_memory_peak_bytes", _C.format("memory high-water mark"), CTR_LABELS),
    ("hami_vgpu_core_limit_ratio", _C.format("core limit, percent,"), CTR_LABELS),
    ("hami_container_device_throttled", "1 while the core limit paces the container's launches", CTR_LABELS),
    (
        "hami_container_throttled_seconds_total",
        "Seconds the container's launches on the card waited (core limit or priority hold)",
        CTR_LABELS,
    ),
    ("hami_container_processes", "Running processes in the container's region", PROC_LABELS),
    ("hami_container_priority", "The container's task priority (0 high, 1 low)", PROC_LABELS),
    ("hami_container_priority_held", "1 while a higher-priority container holds its launches", PROC_LABELS),
    ("hami_namespace_gpu_memory_used_bytes", "Device memory used by the namespace on the node", NS_LABELS),
    (
        "hami_namespace_gpu_memory_limit_bytes",
        "Device memory allocated to the namespace on the node",
        NS_LABELS,
    ),
    (
        "hami_monitor_regions",
        "Container directories by state (ok, unknown_pod, unreadable, empty)",
        STATE_LABELS,
    ),
)


LEGACY_HOST = ("zone", "nodeid", "deviceidx", "deviceuuid", "devicetype")
LEGACY_CTR = ("zone", "podnamespace", "podname", "ctrname", "vdeviceid", "deviceuuid")
#: ``--legacy-metrics``: HAMi's names before v2.10 for the same rows (attribute, name, labels)
LEGACY = (
    ("host_mem", "HostGPUMemoryUsage", LEGACY_HOST),
    ("host_util", "HostCoreUtilization", LEGACY_HOST),
    ("used", "vGPU_device_memory_usage_in_bytes", LEGACY_CTR),
    ("limit", "vGPU_device_memory_limit_in_bytes", LEGACY_CTR),
    ("ctr_util", "Device_utilization_desc_of_container", LEGACY_CTR),
    ("last_kernel", "Device_last_kernel_of_container", LEGACY_CTR),
)


def legacy_families(f: _Families) -> list[Family]:
    """HAMi's legacy families for this scrape's rows (``Device_memory_desc_of_container`` carries
    the context/module/data/offset split as label values, as HAMi did)."""
    out = []
    for attr, name, names in LEGACY:
        new: Family = getattr(f, attr)
        fam = Family(name, new.doc, names)
        fam.rows = [(labels(names, values), v) for (values, _t), v in new.rows]
        out.append(fam)
    desc_names = (*LEGACY_CTR, "context", "module", "data", "offset")
    desc = Family("Device_memory_desc_of_container", "Container device memory description", desc_names)
    for ((values, _t), used), (_l, ctx), (_m, module), (_b, data) in zip(
        f.ctr_mem.rows, f.context.rows, f.module.rows, f.buffer.rows, strict=True
    ):
        split = (ctx, module, data, used - ctx - module - data)
        desc.add(labels(desc_names, (*values, *(str(int(x)) for x in split))), used)
    out.append(desc)
    return out


def build_info(version: str, revision: str = "") -> Family:
    """``hami_build_info`` with HAMi's label names (``go_version`` holds the Python version)."""
    info = Family("hami_build_info", "Build information", BUILD_LABELS)
    values = (
        version,
        revision,
        "",
        platform.python_version(),
        platform.python_implementation(),
        f"{sys.platform}/{platform.machine()}",
    )
    info.add(labels(BUILD_LABELS, values), 1)
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
        legacy: bool = False,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.root = root
        self.node = node
        self.pods = pods
        self.cards = cards
        self.version = version
        self.legacy = legacy
        self.monotonic_ns = monotonic_ns
        self._warned: set[str] = set()
        self._bad: dict[str, str] = {}  # path -> last error logged, so a bad file warns once
        self._lock = threading.Lock()  # one scrape at a time (the warning memory, NVML)
        self._build_info = build_info(version)

    def collect(self) -> Iterator[Metric]:
        for fam in self.scrape():
            yield fam.metric()

    def render(self) -> bytes:
        """The text exposition (format 0.0.4) of one scrape (encoded family by family, which
        keeps the peak memory of a large scrape near twice the body's size)."""
        chunks = []
        for fam in self.scrape():
            out: list[str] = []
            fam.text(out)
            chunks.append("".join(out).encode())
        return b"".join(chunks)

    def scrape(self) -> list[Family]:
        with self._lock:
            return self._scrape()

    def _scrape(self) -> list[Family]:
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
            lv = labels(NS_LABELS, (ZONE, self.node, ns))
            f.ns_used.add(lv, ns_used[ns])
            f.ns_limit.add(lv, ns_limit[ns])
        for state, n in counts.items():
            f.regions.add(labels(STATE_LABELS, (ZONE, self.node, state)), n)
        self._migs(f)
        return [*f.all(), *(legacy_families(f) if self.legacy else ()), self._build_info]

    def _host(self, f: _Families, cards: list[HostCard]) -> None:
        for c in cards:
            lv = labels(HOST_LABELS, (ZONE, self.node, str(c.index), c.uuid, c.type))
            if c.memory_used is not None:
                f.host_mem.add(lv, c.memory_used)
            if c.utilization is not None:
                f.host_util.add(lv, c.utilization)
            if c.memory_utilization is not None:
                f.host_mc_util.add(lv, c.memory_utilization)

    def _container(
        self, f: _Families, pod: PodRef, container: str, r: Region, totals: dict[str, int], now_ns: int
    ) -> tuple[int, int]:
        """Adds one container's series; returns its (used, limit) bytes summed over its cards."""
        allocated = pod.uuids_of(container)
        running = r.alive()
        ident = labels(PROC_LABELS, (ZONE, pod.namespace, pod.name, container))
        f.processes.add(ident, len(running))
        f.priority.add(ident, r.priority)
        f.held.add(ident, 1 if r.recent_kernel < 0 else 0)
        elapsed = (now_ns - r.last_kernel_ns) / 1e9 if r.last_kernel_ns else None
        sum_used = sum_limit = 0
        for dev in r.devices:
            uuid = dev.uuid or (allocated[dev.index] if dev.index < len(allocated) else "")
            lv = labels(CTR_LABELS, (ZONE, pod.namespace, pod.name, container, str(dev.index), uuid))
            # what running processes hold: a killed process's slot keeps its numbers until the
            # container's next process reclaims it, but the driver freed that memory already
            used = r.held(dev.index)
            limit = dev.limit or totals.get(uuid) or 0
            f.used.add(lv, used)
            if limit:
                f.limit.add(lv, limit)
            f.ctr_mem.add(lv, used)
            f.ctr_util.add(lv, dev.util_percent if running else 0.0)
            if elapsed is not None and elapsed >= 0:
                f.last_kernel.add(lv, elapsed)
            context = min(used, dev.ctx_overhead * r.contexts_on(dev.index))
            f.context.add(lv, context)
            f.module.add(lv, 0)
            f.buffer.add(lv, used - context)
            f.peak.add(lv, dev.peak)
            f.core_limit.add(lv, dev.sm_limit if 0 < dev.sm_limit < 100 else 100)
            f.throttled.add(lv, 1 if dev.throttled and running else 0)
            f.throttled_seconds.add(lv, dev.throttled_ns / 1e9)
            sum_used += used
            sum_limit += limit
        return sum_used, sum_limit

    def _migs(self, f: _Families) -> None:
        """``hami_mig_device_info`` for every MIG instance the node's pods were given, from their
        annotation alone: a MIG container gets no libvgpu (the hardware enforces the slice), so it
        has no region directory."""
        for pod in sorted(self.pods.snapshot()[1].values(), key=lambda p: (p.namespace, p.name)):
            for m in pod.migs:
                if not 0 <= m.container_index < len(pod.containers):
                    continue
                values = (
                    ZONE,
                    pod.namespace,
                    pod.name,
                    pod.containers[m.container_index],
                    str(m.device_index),
                    m.gpu_uuid,
                    m.mig_uuid or "",
                    m.profile,
                    "" if m.gpu_instance_id is None else str(m.gpu_instance_id),
                    "" if m.compute_instance_id is None else str(m.compute_instance_id),
                )
                f.mig.add(labels(MIG_LABELS, values), 1)
