"""Live usage: what containers really use on their cards, read from the node monitors' metrics.

Two sources, one result (:class:`LiveUsage`):

* the monitor endpoints themselves (``/metrics`` of each ``hami monitor``, HAMi's names; parsed
  with ``prometheus_client.parser``) — :func:`parse_monitor_metrics`;
* a Prometheus that scrapes them (``--prometheus-url``): instant queries of the same families —
  :func:`parse_prometheus_vector`.

Guarantees: parsing never raises on a tenant's or a monitor's odd output — a sample without the
labels it needs, or with a value that is not a finite number, is skipped; a family the source does
not have reads as no usage. Sizes are kept in bytes, ratios in percent (0 to 100), as exported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

#: (namespace, pod, container, device uuid)
ContainerKey = tuple[str, str, str, str]

CONTAINER_MEMORY = "hami_vgpu_memory_used_bytes"
CONTAINER_UTIL = "hami_container_device_utilization_ratio"
HOST_MEMORY = "hami_host_gpu_memory_used_bytes"
HOST_UTIL = "hami_host_gpu_utilization_ratio"
#: the families the web UI reads (and asks Prometheus for)
FAMILIES = (CONTAINER_MEMORY, CONTAINER_UTIL, HOST_MEMORY, HOST_UTIL)


@dataclass(slots=True)
class ContainerUse:
    memory_bytes: int = 0
    util_percent: float = 0.0


@dataclass(slots=True)
class CardUse:
    memory_bytes: int = 0
    util_percent: float = 0.0


@dataclass(slots=True)
class LiveUsage:
    """Usage per container and card, and per card as the driver sees it; ``errors`` per source."""

    containers: dict[ContainerKey, ContainerUse] = field(default_factory=dict)
    cards: dict[str, CardUse] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: which sources answered (monitor URLs or the Prometheus URL)
    sources: list[str] = field(default_factory=list)
    _per_pod: dict[tuple[str, str], int] | None = field(default=None, repr=False)
    _per_card: dict[str, CardUse] | None = field(default=None, repr=False)

    def container(self, namespace: str, pod: str, container: str, uuid: str) -> ContainerUse | None:
        return self.containers.get((namespace, pod, container, uuid))

    def pod_memory(self, namespace: str, pod: str) -> int | None:
        """Bytes the pod's containers use on all their cards (None when no sample names the pod)."""
        if self._per_pod is None:
            per_pod: dict[tuple[str, str], int] = {}
            for (ns, name, _c, _u), use in self.containers.items():
                per_pod[(ns, name)] = per_pod.get((ns, name), 0) + use.memory_bytes
            self._per_pod = per_pod
        return self._per_pod.get((namespace, pod))

    def card(self, uuid: str) -> CardUse | None:
        """The card's usage as the driver reports it (host families); without those (no NVML on
        the node) the sum of its containers' samples; None when nothing names the card."""
        host = self.cards.get(uuid)
        if host is not None:
            return host
        if self._per_card is None:
            per_card: dict[str, CardUse] = {}
            for (_ns, _pod, _c, card_uuid), use in self.containers.items():
                total = per_card.setdefault(card_uuid, CardUse())
                total.memory_bytes += use.memory_bytes
                total.util_percent = min(total.util_percent + use.util_percent, 100.0)
            self._per_card = per_card
        return self._per_card.get(uuid)

    def merge(self, other: LiveUsage) -> None:
        self._per_pod = self._per_card = None
        self.containers.update(other.containers)
        self.cards.update(other.cards)
        self.errors.update(other.errors)
        self.sources.extend(other.sources)


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _add_sample(usage: LiveUsage, name: str, labels: Mapping[str, str], value: Any) -> None:
    v = _number(value)
    if v is None:
        return
    if name in (CONTAINER_MEMORY, CONTAINER_UTIL):
        ns, pod, container, uuid = (
            labels.get("namespace") or "",
            labels.get("pod") or "",
            labels.get("container") or "",
            labels.get("device_uuid") or "",
        )
        if not (ns and pod and container and uuid):
            return
        c = usage.containers.setdefault((ns, pod, container, uuid), ContainerUse())
        if name == CONTAINER_MEMORY:
            c.memory_bytes = max(int(v), 0)
        else:
            c.util_percent = max(v, 0.0)
    elif name in (HOST_MEMORY, HOST_UTIL):
        card_uuid = labels.get("device_uuid") or ""
        if not card_uuid:
            return
        card = usage.cards.setdefault(card_uuid, CardUse())
        if name == HOST_MEMORY:
            card.memory_bytes = max(int(v), 0)
        else:
            card.util_percent = max(v, 0.0)


def parse_monitor_metrics(text: str, source: str = "") -> LiveUsage:
    """Usage from one monitor's ``/metrics`` text. A text that is not the exposition format gives
    an empty result with the parser's error under ``errors[source]``."""
    usage = LiveUsage()
    try:
        for family in text_string_to_metric_families(text):
            if family.name not in FAMILIES:
                continue
            for sample in family.samples:
                if sample.name == family.name:
                    _add_sample(usage, family.name, sample.labels, sample.value)
    except (ValueError, TypeError, IndexError) as exc:
        return LiveUsage(errors={source: f"{source}: not Prometheus text: {exc}"})
    usage.sources.append(source)
    return usage


def parse_prometheus_vector(name: str, body: Any, source: str = "") -> LiveUsage:
    """Usage from a Prometheus instant-query answer (``/api/v1/query?query=<name>``)."""
    usage = LiveUsage()
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(body, Mapping) or body.get("status") != "success" or not isinstance(data, Mapping):
        error = body.get("error") if isinstance(body, Mapping) else None
        usage.errors[f"{source} {name}"] = f"{source}: query {name} failed: {error or 'unexpected answer'}"
        return usage
    result = data.get("result")
    for item in result if isinstance(result, list) else ():
        if not isinstance(item, Mapping):
            continue
        labels = item.get("metric")
        value = item.get("value")
        if isinstance(labels, Mapping) and isinstance(value, list) and len(value) == 2:
            _add_sample(usage, name, {str(k): str(v) for k, v in labels.items()}, value[1])
    return usage


def merged(parts: Iterable[LiveUsage]) -> LiveUsage:
    out = LiveUsage()
    for p in parts:
        out.merge(p)
    return out
